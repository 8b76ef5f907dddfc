"""Wiring: settings -> store -> cache (+ change follower) -> domain -> servicers
-> grpc.aio server.

``ApiKeysServer`` is what the entry point runs and what tests start on port 0.
It builds the service from a ``Wiring``: the store opener, the servicers and
the interceptors, each with its production default. Tests and benchmarks
pass their variants in (a statement-counting store, a no-op servicer) rather
than assigning to module attributes, and reach what they inspect through the
``Parts`` the started server exposes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.engine import make_url

from server.admin_tokens import AdminTokenVerifier, ensure_dev_key_pair
from server.api.admission import CallAdmission
from server.api.auth import AdminAuthInterceptor
from server.api.authorize import AuthorizeServicer
from server.api.ext_authz import EnvoyAuthorizationServicer
from server.api.key_admin import KeyAdminServicer
from server.api.parsing import ServiceRegistry
from server.cache import CachedKeyStore
from server.domain.admin import KeyAdministration
from server.domain.authorize import Authorizer, Checks
from server.domain.keys import KeyCipher, KeyHasher
from server.domain.paging import PageTokens
from server.domain.routes import RouteFileError, RouteTable
from server.domain.scopes import SCOPE_CATALOG
from server.domain.store import ChangeFeed, KeyStore
from server.domain.usage import UsageRecorder
from server.health import WriteHealth, WriteProbe
from server.invalidation import ChangeFollower
from server.logs import quiet_parameter_loggers
from server.metrics import (
    CountedChecks,
    MultiprocessExport,
    ServiceMetrics,
    render_registry,
    serve_metrics,
)
from server.settings import (
    Settings,
    SettingsError,
    ensure_data_dir,
    ensure_database_present,
    split_address,
    with_secrets,
)
from server.store import open_store
from server.tls import CertificateError, CertificateFiles, ServerCertificates
from server.tracing import TracingInterceptor, tracer_provider_from_environment
from server.transport import TransportLimits
from server.watchers import FRESH_MARGIN_S, Watchers
from voiso.apikeys.v1 import authorize_pb2, authorize_pb2_grpc, key_admin_pb2, key_admin_pb2_grpc

log = logging.getLogger(__name__)

KEY_ADMIN = key_admin_pb2.DESCRIPTOR.services_by_name["KeyAdmin"]
AUTHORIZE = authorize_pb2.DESCRIPTOR.services_by_name["Authorize"]
ENVOY_AUTHORIZATION = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
KEY_ADMIN_SERVICE = KEY_ADMIN.full_name
AUTHORIZE_SERVICE = AUTHORIZE.full_name
SERVICE_NAMES = (KEY_ADMIN_SERVICE, AUTHORIZE_SERVICE)


class Storage(KeyStore, ChangeFeed, WriteProbe, Protocol):
    """What the server needs of its store: the keys, their change feed and
    the write probe that health is judged by."""


StoreOpener = Callable[[str], Awaitable[Storage]]
"""Opens (and migrates) the store at a database URL."""


def admin_interceptors(verifier: AdminTokenVerifier) -> Sequence[grpc.aio.ServerInterceptor]:
    """The production interceptor chain: admin authentication."""
    return (AdminAuthInterceptor(verifier),)


@dataclass(frozen=True, kw_only=True, slots=True)
class Wiring:
    """The parts the server is built from; the defaults are production's."""

    open_store: StoreOpener = open_store
    authorize_servicer: Callable[
        [Checks, Watchers | None], authorize_pb2_grpc.AuthorizeServicer
    ] = AuthorizeServicer
    # Envoy's generated servicer base is untyped; the registry serves the
    # methods its descriptor names.
    envoy_authorization_servicer: Callable[[Checks], object] = EnvoyAuthorizationServicer
    key_admin_servicer: Callable[[KeyAdministration], key_admin_pb2_grpc.KeyAdminServicer] = (
        KeyAdminServicer
    )
    interceptors: Callable[[AdminTokenVerifier], Sequence[grpc.aio.ServerInterceptor]] = field(
        default=admin_interceptors
    )
    tracer_provider: Callable[[], TracerProvider | None] = tracer_provider_from_environment
    """Where spans go; ``None``, as without ``OTEL_*`` variables, installs no
    tracing at all."""
    # The wall clock by which keys expire and rolled secrets stop.
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


@dataclass(frozen=True, kw_only=True, slots=True)
class Parts:
    """What a started server is made of, for the code that inspects it."""

    store: Storage
    cache: CachedKeyStore
    follower: ChangeFollower
    watchers: Watchers | None
    """The open ``WatchChanges`` streams; ``None`` when watching is off."""
    usage: UsageRecorder
    write_health: WriteHealth
    authorizer: Authorizer
    checks: Checks
    """What the check services ask: the authorizer, counted when metrics are on."""
    administration: KeyAdministration
    metrics: ServiceMetrics | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Prepared:
    """What start-up loads before touching the network or the database."""

    settings: Settings
    routes: RouteTable
    verifier: AdminTokenVerifier
    certificates: ServerCertificates | None


def prepare(settings: Settings) -> Prepared:
    """Loads secrets, routes and admin keys; ``SettingsError`` names the
    option whose file or value is unusable."""
    ensure_data_dir(settings.data_dir)
    ensure_database_present(settings)
    try:
        routes = RouteTable.load(settings.routes, known_scopes=SCOPE_CATALOG.keys())
    except RouteFileError as exc:
        raise SettingsError("--routes", str(exc)) from None
    certificates = _certificates(settings)
    # Secrets before the development key pair: on PostgreSQL missing secrets
    # stop the start, and nothing should have been generated by then.
    settings = with_secrets(settings)
    keys_file = settings.admin_public_keys
    if keys_file is None and settings.is_postgres:
        # Anyone who can read the development signing key could sign tokens
        # for any contact center.
        raise SettingsError(
            "--admin-public-keys",
            "required with a PostgreSQL database: the development key pair is not for production",
        )
    if keys_file is None:
        keys_file = ensure_dev_key_pair(settings.data_dir)
        log.warning(
            "no admin public keys configured; using the development key pair",
            extra={"file": str(keys_file)},
        )
    try:
        verifier = AdminTokenVerifier.from_file(
            keys_file,
            audience=settings.admin_audience,
            issuer=settings.admin_issuer,
            max_lifetime=settings.admin_max_token_lifetime,
        )
    except ValueError as exc:
        raise SettingsError("--admin-public-keys", str(exc)) from None
    return Prepared(settings=settings, routes=routes, verifier=verifier, certificates=certificates)


def _certificates(settings: Settings) -> ServerCertificates | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    files = CertificateFiles(
        cert=settings.tls_cert, key=settings.tls_key, client_ca=settings.tls_client_ca
    )
    try:
        return ServerCertificates(files)
    except CertificateError as exc:
        raise SettingsError(exc.option, exc.reason) from None


class ApiKeysServer:
    """The gRPC server with everything behind it."""

    def __init__(
        self,
        prepared: Prepared,
        *,
        wiring: Wiring | None = None,
        metrics_dir: Path | None = None,
    ) -> None:
        """``metrics_dir``: with ``--metrics-listen``, write the metrics there
        for the metrics process of ``--workers`` instead of serving them."""
        self._prepared = prepared
        self._wiring = wiring or Wiring()
        self._metrics_dir = metrics_dir
        self._metrics_server: asyncio.Server | None = None
        self._metrics_export: MultiprocessExport | None = None
        self._servers: list[grpc.aio.Server] = []
        self._health = HealthServicer()
        self._parts: Parts | None = None
        self._tracer_provider = self._wiring.tracer_provider()
        self.port = 0
        self.admin_port = 0
        """The port serving ``KeyAdmin``: ``port`` unless ``--admin-listen`` is set."""
        self.metrics_port = 0
        """The port serving ``/metrics`` in this process, if one does."""

    @property
    def settings(self) -> Settings:
        """The settings the server runs with (secrets included)."""
        return self._prepared.settings

    @property
    def parts(self) -> Parts:
        """What the started server is made of."""
        if self._parts is None:
            raise RuntimeError("the server has not been started")
        return self._parts

    async def start(self) -> None:
        """Opens the store (migrating it), binds the port and serves."""
        settings = self._prepared.settings
        quiet_parameter_loggers()
        store = await self._wiring.open_store(settings.database_url)
        cache = CachedKeyStore(
            store,
            ttl=settings.cache_ttl,
            size=settings.cache_size,
            negative_ttl=settings.negative_cache_ttl,
            negative_size=settings.negative_cache_size,
        )
        # Before the port opens, so that no answer is cached ahead of the
        # follower knowing where the change feed stands.
        follower = ChangeFollower(store, cache, poll=settings.change_poll)
        watchers = None
        if settings.watch:
            watchers = Watchers(
                follower,
                limit=settings.max_watchers,
                buffer=settings.watch_buffer,
                heartbeat=settings.watch_heartbeat,
                fresh_within=settings.change_poll + FRESH_MARGIN_S,
            )
            follower.tell(watchers)
        try:
            await follower.start()
            usage = UsageRecorder(cache, interval=settings.last_used_flush)
            write_health = WriteHealth(
                store, self._health, service=KEY_ADMIN_SERVICE, interval=settings.health_probe
            )
            parts = self._assemble(store, cache, follower, watchers, usage, write_health)
            servers = self._bound_servers(parts)
            try:
                for server in servers:
                    await server.start()
                if parts.metrics is not None:
                    await self._export_metrics(parts.metrics)
            except BaseException:
                await asyncio.gather(*(server.stop(None) for server in servers))
                raise
        except BaseException:
            await follower.stop()
            await cache.close()
            raise
        usage.start()
        if watchers is not None:
            watchers.start()
        self._servers, self._parts = servers, parts
        # The store was just opened and migrated, a committed write.
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        write_health.start()
        log.info(
            "serving",
            extra={
                "listen": f"{settings.listen_host}:{self.port}",
                **({"admin_port": self.admin_port} if settings.admin_listen else {}),
                "tls": _tls_mode(self._prepared.certificates),
                "database": make_url(settings.database_url).render_as_string(hide_password=True),
                "pid": os.getpid(),
            },
        )

    async def _export_metrics(self, metrics: ServiceMetrics) -> None:
        if self._metrics_dir is not None:
            self._metrics_export = MultiprocessExport(metrics, self._metrics_dir)
            self._metrics_export.start()
            return
        address = self.settings.metrics_listen
        assert address is not None
        host, port = split_address(address)
        try:
            server = await serve_metrics(render_registry(metrics.registry()), host=host, port=port)
        except OSError as exc:
            raise SettingsError("--metrics-listen", f"cannot bind {address}") from exc
        self._metrics_server = server
        self.metrics_port = server.sockets[0].getsockname()[1]

    def _bound_servers(self, parts: Parts) -> list[grpc.aio.Server]:
        """The main server, and the admin server when ``--admin-listen``
        asks for one, bound to their ports. grpc serves every service on
        every port of one server, so separate ports take separate servers."""
        settings = self._prepared.settings
        if settings.admin_listen is None:
            server = self._grpc_server(parts, SERVICE_NAMES)
            self.port = self.admin_port = self._bind(server, settings.listen, "--listen")
            return [server]
        main = self._grpc_server(parts, (AUTHORIZE_SERVICE,))
        self.port = self._bind(main, settings.listen, "--listen")
        admin = self._grpc_server(parts, (KEY_ADMIN_SERVICE,))
        self.admin_port = self._bind(admin, settings.admin_listen, "--admin-listen")
        return [main, admin]

    def _bind(self, server: grpc.aio.Server, address: str, option: str) -> int:
        certificates = self._prepared.certificates
        try:
            if certificates is None:
                return server.add_insecure_port(address)
            return server.add_secure_port(address, certificates.credentials())
        except RuntimeError as exc:
            raise SettingsError(option, f"cannot bind {address}") from exc

    def _assemble(
        self,
        store: Storage,
        cache: CachedKeyStore,
        follower: ChangeFollower,
        watchers: Watchers | None,
        usage: UsageRecorder,
        write_health: WriteHealth,
    ) -> Parts:
        settings = self._prepared.settings
        assert settings.hmac_secret is not None and settings.encryption_keys is not None
        hasher = KeyHasher(settings.hmac_secret.reveal())
        authorizer = Authorizer(
            keys=cache,
            hasher=hasher,
            routes=self._prepared.routes,
            usage=usage,
            store_timeout=settings.store_timeout,
            cache_ttl=settings.cache_ttl,
            marks=follower,
            clock=self._wiring.clock,
        )
        metrics = None
        if settings.metrics_listen is not None:
            metrics = ServiceMetrics(cache=cache, follower=follower, watchers=watchers)
        return Parts(
            store=store,
            cache=cache,
            follower=follower,
            watchers=watchers,
            usage=usage,
            write_health=write_health,
            authorizer=authorizer,
            checks=authorizer if metrics is None else CountedChecks(authorizer, metrics.checks),
            metrics=metrics,
            administration=KeyAdministration(
                store=cache,
                hasher=hasher,
                cipher=KeyCipher(settings.encryption_keys.reveal()),
                page_tokens=PageTokens(settings.hmac_secret.reveal()),
                clock=self._wiring.clock,
            ),
        )

    def _grpc_server(self, parts: Parts, served: Sequence[str]) -> grpc.aio.Server:
        settings = self._prepared.settings
        wiring = self._wiring
        limits = TransportLimits.from_settings(settings)
        # Tracing first: a call refused by authentication is a span too.
        tracing = (
            () if self._tracer_provider is None else (TracingInterceptor(self._tracer_provider),)
        )
        server = grpc.aio.server(
            interceptors=(*tracing, *wiring.interceptors(self._prepared.verifier)),
            options=[
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
                *limits.channel_options(),
            ],
        )
        registry = ServiceRegistry(
            CallAdmission(limits.max_concurrent_rpcs, request_timeout=limits.request_timeout),
            timer=None if parts.metrics is None else parts.metrics.calls,
        )
        if KEY_ADMIN_SERVICE in served:
            registry.add_service(server, KEY_ADMIN, wiring.key_admin_servicer(parts.administration))
        if AUTHORIZE_SERVICE in served:
            registry.add_service(
                server, AUTHORIZE, wiring.authorize_servicer(parts.checks, parts.watchers)
            )
            registry.add_service(
                server,
                ENVOY_AUTHORIZATION,
                wiring.envoy_authorization_servicer(parts.checks),
            )
        registry.add_service(server, HEALTH, self._health)
        # Reflection is an admin tool: with a separate admin port it stays
        # there, out of reach of every caller of Check.
        if settings.reflection and KEY_ADMIN_SERVICE in served:
            registry.add_service(
                server,
                REFLECTION,
                ReflectionServicer(
                    (
                        *served,
                        *((ENVOY_AUTHORIZATION.full_name,) if AUTHORIZE_SERVICE in served else ()),
                        HEALTH.full_name,
                        REFLECTION.full_name,
                    )
                ),
            )
        return server

    async def flush_usage(self) -> None:
        """Writes pending last-used times now instead of at the next tick."""
        if self._parts is not None:
            await self._parts.usage.flush()

    async def sync_changes(self) -> None:
        """Applies the change feed now instead of at the next notification or
        poll. Raises ``StoreUnavailable`` when the feed cannot be read."""
        if self._parts is not None:
            await self._parts.follower.sync()

    async def stop(self, grace: float | None = None) -> None:
        """Stops taking calls, lets in-flight ones finish for ``grace``
        seconds, flushes last-used times and closes the store."""
        if not self._servers or self._parts is None:
            return
        parts = self._parts
        grace = self.settings.shutdown_grace if grace is None else grace
        await parts.write_health.stop()
        if parts.watchers is not None:
            await parts.watchers.stop()
        await self._health.enter_graceful_shutdown()
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        self._servers = []
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._metrics_export is not None:
            await self._metrics_export.stop()
            self._metrics_export = None
        try:
            await parts.usage.stop()
        finally:
            await parts.follower.stop()
            await parts.cache.close()
            if self._tracer_provider is not None:
                # Sends the spans still buffered.
                self._tracer_provider.shutdown()
        log.info("stopped")


def _tls_mode(certificates: ServerCertificates | None) -> str:
    if certificates is None:
        return "off"
    return "mutual" if certificates.mutual else "on"


async def serve(
    settings: Settings, wiring: Wiring | None = None, *, metrics_dir: Path | None = None
) -> None:
    """Runs the server until SIGTERM or SIGINT, then stops it gracefully
    (``metrics_dir``: see ``ApiKeysServer``)."""
    server = ApiKeysServer(prepare(settings), wiring=wiring, metrics_dir=metrics_dir)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        log.info("shutting down")
        await server.stop()
