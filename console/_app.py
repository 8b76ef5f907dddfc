"""The API keys page: a Starlette application over ``KeyAdmin``.

Every page and action calls ``KeyAdmin`` through the client library with the
token of the person using the page (``Authorization: Bearer`` from the
platform's sign-in proxy, else the session cookie), so the page never has
more rights than its user.

Security of the page itself:

- every form carries a per-session token that must equal the one in the
  ``apikeys_csrf`` cookie, and a cross-site ``Origin`` or ``Sec-Fetch-Site``
  is refused as well;
- every response carries a Content-Security-Policy that allows the page's
  own script and style files only and no framing; pages are ``no-store``;
- cookies are HttpOnly, SameSite=Strict, and Secure unless ``--dev``;
- a secret is only ever in the body of the POST response that created or
  revealed it: never in a URL, a redirect, a cookie or a log line (the access
  log records paths without their query strings).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, Final, TypedDict
from urllib.parse import urlsplit

import jinja2
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clients import ApiKeysError, AsyncKeyAdminClient
from console._identity import DEV_ROLES, PERMISSIONS, Admin, DevSignIn
from console._problems import Problem, not_permitted, problem_of
from console._settings import ConsoleSettings
from voiso.apikeys.v1 import api_key_pb2

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "SESSION_COOKIE", "create_app"]

log = logging.getLogger("console")

SESSION_COOKIE: Final = "apikeys_session"
CSRF_COOKIE: Final = "apikeys_csrf"
CSRF_FIELD: Final = "csrf_token"
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_PACKAGE: Final = Path(__file__).resolve().parent
_NOTICES: Final = {
    "deleted": "The key was deleted. It no longer authorizes any request.",
    "saved": "Changes saved.",
    "unchanged": "Nothing to save: the key already looks like this.",
    "key-in-search": "That was an API key, so it was not searched for: search by a key's "
    "name or description.",
}
_KEY_PREFIX: Final = "vsk_"
_SCOPE_TIPS: Final = (
    "Start with the minimum set of scopes the integration needs.",
    "Prefer read scopes for reporting and data retrieval.",
    "Add manage or dedicated action scopes only when the integration must create or "
    "change data, or perform higher-risk operations such as sending messages.",
)
# Loopback names a --dev console answers to, so a rebound DNS name cannot
# reach a page that signs everyone in as an admin.
_LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1", "[::1]")


class CsrfRefused(Exception):
    """A form came without the session's CSRF token, or from another site."""


class DevSignInUnavailable(Exception):
    """``--dev`` cannot mint tokens: the server has not written its key pair."""


class KeyValues(TypedDict):
    """What the key form holds: as posted, or the key's own values."""

    name: str
    description: str
    scopes: list[str]


@dataclass(frozen=True, kw_only=True, slots=True)
class ScopeGroup:
    """The catalog's scopes of one domain, as the scope picker shows them."""

    domain: str
    scopes: tuple[api_key_pb2.ScopeInfo, ...]


class Console:
    """The page's handlers, with the settings and templates they share."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self._settings = settings
        self._dev = DevSignIn(settings.data_dir) if settings.dev else None
        environment = jinja2.Environment(
            loader=jinja2.PackageLoader("console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        environment.filters["time"] = _format_time
        environment.filters["action"] = _audit_action
        environment.filters["state"] = _key_state
        environment.filters["changes"] = _audit_changes
        environment.globals.update(
            csrf_field=CSRF_FIELD,
            dev=settings.dev,
            dev_roles=DEV_ROLES,
            permissions=PERMISSIONS,
            scope_tips=_SCOPE_TIPS,
        )
        self._templates = environment

    def routes(self) -> list[Route | Mount]:
        """The page's routes, static files included."""
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/keys", self._as_admin(self.list_keys), methods=["GET"]),
            Route("/keys", self._as_admin(self.create_key), methods=["POST"]),
            Route("/keys/new", self._as_admin(self.new_key), methods=["GET"]),
            Route("/keys/{key_id}", self._as_admin(self.show_key), methods=["GET"]),
            Route("/keys/{key_id}", self._as_admin(self.update_key), methods=["POST"]),
            Route("/keys/{key_id}/reveal", self._as_admin(self.reveal_key), methods=["POST"]),
            Route("/keys/{key_id}/delete", self._as_admin(self.delete_key), methods=["POST"]),
            Route("/dev/sign-in", self.dev_sign_in, methods=["POST"]),
            Mount("/static", StaticFiles(directory=_PACKAGE / "static"), name="static"),
        ]

    # Pages ---------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        """The list is the console's front page."""
        return RedirectResponse("/keys", status_code=303)

    async def list_keys(self, request: Request, admin: Admin) -> Response:
        """The table of keys, filtered by the Search field's ``q``."""
        query = request.query_params.get("q", "").strip()
        if query.startswith(_KEY_PREFIX):
            # A key pasted into Search: the redirect takes it out of the
            # address bar and the browser's history, and it is never sent on.
            return RedirectResponse("/keys?notice=key-in-search", status_code=303)
        notice = _NOTICES.get(request.query_params.get("notice", ""))
        try:
            async with self._client(admin) as client:
                keys = [key async for key in client.iter_keys(query, page_size=100)]
        except ApiKeysError as exc:
            return self._problem_page(request, admin, problem_of(exc, attempted="view API keys"))
        return self._render(
            request,
            admin,
            "keys.html",
            keys=keys,
            query=query,
            notice=notice,
        )

    async def new_key(self, request: Request, admin: Admin) -> Response:
        """The Add key panel: name, description and the scope picker."""
        if not admin.may_create:
            # Not offered, but a bookmarked or typed address still deserves a sentence.
            return self._problem_page(request, admin, not_permitted("create API keys"))
        return await self._new_key_form(request, admin, values=None, problem=None)

    async def create_key(self, request: Request, admin: Admin) -> Response:
        """Generate key: creates the key and shows its secret, this once."""
        form = await self._form(request)
        values = _key_form_values(form)
        try:
            async with self._client(admin) as client:
                key, secret = await client.create_key(
                    values["name"], values["description"], values["scopes"]
                )
        except ApiKeysError as exc:
            problem = problem_of(exc, attempted="create API keys")
            return await self._new_key_form(request, admin, values=values, problem=problem)
        log.info("key %s created by %r", key.id, admin.subject)
        return self._render(request, admin, "created.html", key=key, secret=secret)

    async def show_key(self, request: Request, admin: Admin) -> Response:
        """The key's page: details, scopes, history, and the controls allowed."""
        notice = _NOTICES.get(request.query_params.get("notice", ""))
        return await self._key_page(request, admin, notice=notice)

    async def update_key(self, request: Request, admin: Admin) -> Response:
        """Save changes: sends only the fields that changed."""
        form = await self._form(request)
        key_id = request.path_params["key_id"]
        values = _key_form_values(form)
        try:
            async with self._client(admin) as client:
                current = await client.get_key(key_id)
                changes = _changes(current, values)
                if changes:
                    await client.update_key(key_id, **changes)
        except ApiKeysError as exc:
            problem = problem_of(exc, attempted="change API keys")
            return await self._key_page(request, admin, values=values, problem=problem)
        notice = "saved" if changes else "unchanged"
        return RedirectResponse(f"/keys/{key_id}?notice={notice}", status_code=303)

    async def reveal_key(self, request: Request, admin: Admin) -> Response:
        """Show key: the key page with the full secret (the server audits it)."""
        await self._form(request)
        key_id = request.path_params["key_id"]
        try:
            async with self._client(admin) as client:
                secret = await client.reveal_key(key_id)
        except ApiKeysError as exc:
            problem = problem_of(exc, attempted="show API keys")
            return await self._key_page(request, admin, problem=problem)
        log.info("key %s shown to %r", key_id, admin.subject)
        return await self._key_page(request, admin, secret=secret)

    async def delete_key(self, request: Request, admin: Admin) -> Response:
        """Delete: revokes the key at once, then back to the list."""
        await self._form(request)
        key_id = request.path_params["key_id"]
        try:
            async with self._client(admin) as client:
                await client.delete_key(key_id)
        except ApiKeysError as exc:
            problem = problem_of(exc, attempted="delete API keys")
            return self._problem_page(request, admin, problem)
        log.info("key %s deleted by %r", key_id, admin.subject)
        return RedirectResponse("/keys?notice=deleted", status_code=303)

    async def dev_sign_in(self, request: Request) -> Response:
        """``--dev`` only: sign in again with another role, permissions or SAG."""
        if self._dev is None:
            raise HTTPException(status_code=404)
        form = await self._form(request)
        role = str(form.get("role", ""))
        if role not in DEV_ROLES:
            raise HTTPException(status_code=400)
        try:
            admin = self._dev.sign_in(
                role=role,
                permissions=[str(p) for p in form.getlist("permission")],
                sag=form.get("sag") == "on",
            )
        except (OSError, ValueError) as exc:
            raise DevSignInUnavailable from exc
        request.state.session_token = admin.token
        return RedirectResponse("/keys", status_code=303)

    async def guard(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Turns refusals and failures into pages, sets the security headers
        and cookies of every response, and writes the access log line (the
        path only: a query string is the user's input)."""
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except CsrfRefused:
            response = self._render(request, None, "refused.html", status_code=403)
        except DevSignInUnavailable:
            response = self._render(
                request,
                None,
                "dev_key_missing.html",
                status_code=503,
                signing_key=str(self._dev.signing_key if self._dev else ""),
            )
        except Exception:
            log.exception("unexpected error on %s %s", request.method, _logged_path(request))
            problem = Problem(status=500, message="Something went wrong. Try again.")
            response = self._problem_page(request, None, problem)
        headers = response.headers
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            headers["Cache-Control"] = "no-store"
        state = request.state
        if getattr(state, "new_csrf_token", None):
            self._set_cookie(response, CSRF_COOKIE, state.new_csrf_token)
        if getattr(state, "session_token", None):
            self._set_cookie(response, SESSION_COOKIE, state.session_token)
        log.info(
            "%s %s %d %.1fms",
            request.method,
            _logged_path(request),
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

    # Building blocks -----------------------------------------------------

    def _as_admin(
        self, handler: Callable[[Request, Admin], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` called with the signed-in admin; the sign-in page when there is none."""

        async def endpoint(request: Request) -> Response:
            admin = self._signed_in(request)
            if admin is None:
                return self._signed_out(request)
            return await handler(request, admin)

        return endpoint

    def _set_cookie(self, response: Response, name: str, value: str) -> None:
        response.set_cookie(
            name, value, path="/", httponly=True, secure=not self._settings.dev, samesite="strict"
        )

    def _signed_in(self, request: Request) -> Admin | None:
        """The admin of the request: the proxy's header first, then the
        session cookie; with ``--dev`` a development token when neither."""
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return Admin.from_token(credentials.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        admin = Admin.from_token(cookie) if cookie else None
        if self._dev is None:
            return admin
        try:
            renewed = self._dev.renewed(admin)
        except (OSError, ValueError) as exc:
            raise DevSignInUnavailable from exc
        if renewed is not admin:
            request.state.session_token = renewed.token
        return renewed

    def _client(self, admin: Admin) -> AsyncKeyAdminClient:
        return AsyncKeyAdminClient(self._settings.channel, token=admin.token)

    async def _form(self, request: Request) -> FormData:
        """The posted form, once its CSRF token and origin are checked."""
        if not _same_site(request):
            raise CsrfRefused("cross-site form")
        form = await request.form()
        expected = request.cookies.get(CSRF_COOKIE, "")
        given = form.get(CSRF_FIELD)
        if not expected or not isinstance(given, str) or not hmac.compare_digest(expected, given):
            raise CsrfRefused("form without the session's token")
        return form

    async def _new_key_form(
        self,
        request: Request,
        admin: Admin,
        *,
        values: KeyValues | None,
        problem: Problem | None,
    ) -> Response:
        scope_groups: list[ScopeGroup] = []
        if problem is None or problem.status == 400:
            try:
                async with self._client(admin) as client:
                    scope_groups = _grouped(await client.list_scopes())
            except ApiKeysError as exc:
                problem = problem_of(exc, attempted="create API keys")
        return self._render(
            request,
            admin,
            "new_key.html",
            status_code=problem.status if problem else 200,
            values=values or {},
            scope_groups=scope_groups,
            problem=problem,
        )

    async def _key_page(
        self,
        request: Request,
        admin: Admin,
        *,
        values: KeyValues | None = None,
        problem: Problem | None = None,
        notice: str | None = None,
        secret: str | None = None,
    ) -> Response:
        key_id = request.path_params["key_id"]
        try:
            async with self._client(admin) as client:
                key = await client.get_key(key_id)
                history = await client.list_audit_events(key_id, page_size=100)
                catalog = await client.list_scopes() if admin.may_edit else []
        except ApiKeysError as exc:
            return self._problem_page(request, admin, problem_of(exc, attempted="view API keys"))
        shown: KeyValues = values or {
            "name": key.name,
            "description": key.description,
            "scopes": list(key.scopes),
        }
        return self._render(
            request,
            admin,
            "key.html",
            status_code=problem.status if problem else 200,
            key=key,
            events=list(history.events),
            more_events=bool(history.next_page_token),
            scope_groups=_grouped(catalog),
            values=shown,
            problem=problem,
            notice=notice,
            secret=secret,
        )

    def _problem_page(self, request: Request, admin: Admin | None, problem: Problem) -> Response:
        return self._render(
            request, admin, "problem.html", status_code=problem.status, problem=problem
        )

    def _signed_out(self, request: Request) -> Response:
        return self._render(request, None, "signed_out.html", status_code=401)

    def _render(
        self,
        request: Request,
        admin: Admin | None,
        template: str,
        *,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        defaults: dict[str, Any] = {"problem": None, "notice": None, "secret": None, "values": {}}
        page = self._templates.get_template(template).render(
            {**defaults, **context}, admin=admin, csrf_token=_csrf_token(request)
        )
        return HTMLResponse(page, status_code=status_code)


def create_app(settings: ConsoleSettings) -> Starlette:
    """The console as an ASGI application."""
    console = Console(settings)
    middleware = [Middleware(BaseHTTPMiddleware, dispatch=console.guard)]
    if settings.dev:
        middleware.insert(
            0,
            Middleware(
                TrustedHostMiddleware,
                allowed_hosts=[*_LOOPBACK_HOSTS, settings.host],
                www_redirect=False,
            ),
        )
    return Starlette(routes=console.routes(), middleware=middleware)


def _logged_path(request: Request) -> str:
    """The path as the client sent it, still percent-encoded (so a ``%0A``
    cannot start a forged log line) and without the query string."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    return raw.decode("ascii", "backslashreplace")


def _csrf_token(request: Request) -> str:
    """The session's CSRF token, made (and set as a cookie) on first use."""
    token = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf_token", None)
    if not token:
        token = secrets.token_urlsafe(32)
        request.state.new_csrf_token = token
    return str(token)


def _same_site(request: Request) -> bool:
    """Whether the browser says the form comes from this site (a browser that
    says nothing is judged by the CSRF token alone)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host")


def _key_form_values(form: FormData) -> KeyValues:
    return {
        "name": str(form.get("name", "")),
        "description": str(form.get("description", "")),
        "scopes": [str(scope) for scope in form.getlist("scopes")],
    }


def _changes(key: api_key_pb2.ApiKey, values: KeyValues) -> dict[str, Any]:
    """The update's arguments: only the fields whose value differs from the key's."""
    changes: dict[str, Any] = {}
    if values["name"].strip() != key.name:
        changes["name"] = values["name"]
    if values["description"].strip() != key.description:
        changes["description"] = values["description"]
    if sorted(set(values["scopes"])) != sorted(key.scopes):
        changes["scopes"] = values["scopes"]
    return changes


def _grouped(catalog: Sequence[api_key_pb2.ScopeInfo]) -> list[ScopeGroup]:
    """The catalog grouped by domain, domains in the order they first appear."""
    groups: dict[str, list[api_key_pb2.ScopeInfo]] = {}
    for scope in catalog:
        groups.setdefault(scope.domain, []).append(scope)
    return [ScopeGroup(domain=domain, scopes=tuple(scopes)) for domain, scopes in groups.items()]


def _format_time(timestamp: Timestamp) -> str:
    return timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _key_state(key: api_key_pb2.ApiKey) -> str:
    name = api_key_pb2.ApiKey.State.Name(key.state)
    return name.removeprefix("STATE_").capitalize()


def _audit_action(event: api_key_pb2.AuditEvent) -> str:
    name = api_key_pb2.AuditAction.Name(event.action)
    return name.removeprefix("AUDIT_ACTION_").replace("_", " ").capitalize()


def _audit_changes(event: api_key_pb2.AuditEvent) -> list[str]:
    """One line per field the event changed: the new value alone for a key
    just created, old and new otherwise."""
    changes = []
    for label, old, new in (
        ("Name", event.old_name, event.new_name),
        ("Description", event.old_description, event.new_description),
        ("Scopes", ", ".join(event.old_scopes), ", ".join(event.new_scopes)),
    ):
        if old == new:
            continue
        changes.append(f"{label}: {new}" if not old else f"{label}: {old} → {new or '—'}")
    return changes
