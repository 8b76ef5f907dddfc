"""Where and how the clients connect: target, TLS, deadlines and retries.

Retries follow two rules so that an outage of the service is not made worse
by its callers: only ``UNAVAILABLE`` is retried (the call did not happen or
the store could not answer; a ``DEADLINE_EXCEEDED`` call may still be running
and retrying it doubles the load exactly when the server is slow), and every
retry spends a token of a per-client :class:`RetryBudget`, so retries stay a
small fraction of calls however long the outage lasts. Waits between attempts
are exponential with full jitter, so callers that failed together do not come
back together.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

import grpc

from clients._exceptions import from_rpc_error, status_code

__all__ = [
    "DEFAULT_INITIAL_BACKOFF",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_RETRY_BUDGET_MIN_PER_SECOND",
    "DEFAULT_RETRY_BUDGET_RATIO",
    "DEFAULT_TARGET",
    "ChannelOptions",
    "Retrier",
    "RetryBudget",
    "RetryPolicy",
    "create_aio_channel",
    "create_channel",
]

_T = TypeVar("_T")

DEFAULT_TARGET: Final = "127.0.0.1:50051"
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_INITIAL_BACKOFF: Final = 0.01
DEFAULT_MAX_BACKOFF: Final = 0.2
DEFAULT_BACKOFF_MULTIPLIER: Final = 2.0
DEFAULT_RETRY_BUDGET_RATIO: Final = 0.1
DEFAULT_RETRY_BUDGET_MIN_PER_SECOND: Final = 10.0

SERVER_ENV: Final = "APIKEYS_SERVER"
"""Environment variable naming the default target."""


def _default_target() -> str:
    return os.environ.get(SERVER_ENV) or DEFAULT_TARGET


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How often and how patiently a call that failed with ``UNAVAILABLE`` is retried."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    backoff_multiplier: float = DEFAULT_BACKOFF_MULTIPLIER

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError("backoffs must satisfy 0 <= initial_backoff <= max_backoff")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be at least 1")

    @staticmethod
    def retryable(code: grpc.StatusCode) -> bool:
        """Whether a call that failed with ``code`` may be tried again."""
        return code is grpc.StatusCode.UNAVAILABLE

    def backoff(self, retry: int, random_unit: Callable[[], float]) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        Full jitter: uniform between 0 and the capped exponential ceiling.
        """
        ceiling = min(
            self.max_backoff, self.initial_backoff * self.backoff_multiplier ** (retry - 1)
        )
        return random_unit() * ceiling


class RetryBudget:
    """A token bucket that bounds retries to a fraction of calls plus a small floor.

    Every call deposits ``ratio`` tokens and time deposits ``min_per_second``
    tokens a second; a retry withdraws one. The bucket holds at most
    ``max(1, min_per_second)`` tokens, so a long quiet spell does not save up a
    burst of retries for the next outage. Safe to share between threads.
    """

    def __init__(
        self,
        *,
        ratio: float = DEFAULT_RETRY_BUDGET_RATIO,
        min_per_second: float = DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or min_per_second < 0:
            raise ValueError("retry budget ratio and min_per_second must not be negative")
        self._ratio = ratio
        self._min_per_second = min_per_second
        self._capacity = max(1.0, min_per_second)
        self._clock = clock
        self._lock = threading.Lock()
        self._balance = self._capacity
        self._refilled_at = clock()

    def record_call(self) -> None:
        """Counts one call (not a retry) towards the budget."""
        with self._lock:
            self._refill()
            self._balance = min(self._capacity, self._balance + self._ratio)

    def try_spend(self) -> bool:
        """Takes the token for one retry; ``False`` when the budget is exhausted."""
        with self._lock:
            self._refill()
            # The tolerance keeps ten deposits of 0.1, which sum to 0.999..., worth a retry.
            if self._balance < 1 - 1e-9:
                return False
            self._balance -= 1
            return True

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._refilled_at)
        self._refilled_at = now
        self._balance = min(self._capacity, self._balance + elapsed * self._min_per_second)


@dataclass(frozen=True, kw_only=True, slots=True)
class Retrier:
    """Runs a call's attempts under a policy, a budget and an overall deadline.

    ``clock``, ``random_unit`` and the sleeps are injectable so the retry
    behaviour can be tested without a server or real time.
    """

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    budget: RetryBudget = field(default_factory=RetryBudget)
    clock: Callable[[], float] = time.monotonic
    random_unit: Callable[[], float] = random.random
    sleep: Callable[[float], None] = time.sleep
    async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def call(self, attempt: Callable[[float | None], _T], *, timeout: float | None) -> _T:
        """Calls ``attempt(remaining_seconds)`` until it succeeds or may not be retried.

        ``timeout`` bounds all attempts and waits together. A final failure is
        raised as the matching :class:`~clients.ApiKeysError`.
        """
        deadline = self._start(timeout)
        retry = 0
        while True:
            try:
                return attempt(self._remaining(deadline))
            except grpc.RpcError as exc:
                retry += 1
                delay = self.delay_before_retry(exc, retry=retry, deadline=deadline)
                if delay is None:
                    raise from_rpc_error(exc) from exc
            self.sleep(delay)

    async def acall(
        self,
        attempt: Callable[[float | None], Awaitable[_T]],
        *,
        timeout: float | None,  # noqa: ASYNC109 - becomes the deadline the server sees
    ) -> _T:
        """The ``asyncio`` form of :meth:`call`."""
        deadline = self._start(timeout)
        retry = 0
        while True:
            try:
                return await attempt(self._remaining(deadline))
            except grpc.RpcError as exc:
                retry += 1
                delay = self.delay_before_retry(exc, retry=retry, deadline=deadline)
                if delay is None:
                    raise from_rpc_error(exc) from exc
            await self.async_sleep(delay)

    def delay_before_retry(
        self, exc: grpc.RpcError, *, retry: int, deadline: float | None
    ) -> float | None:
        """Seconds to wait before retry number ``retry`` after ``exc``, or ``None`` to give up."""
        if retry >= self.policy.max_attempts or not self.policy.retryable(status_code(exc)):
            return None
        delay = self.policy.backoff(retry, self.random_unit)
        if deadline is not None and self.clock() + delay >= deadline:
            return None
        # Spent last, so a retry refused for another reason costs no token.
        if not self.budget.try_spend():
            return None
        return delay

    def _start(self, timeout: float | None) -> float | None:
        self.budget.record_call()
        return None if timeout is None else self.clock() + timeout

    def _remaining(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - self.clock())


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelOptions:
    """How a client reaches the service.

    ``target`` defaults to ``$APIKEYS_SERVER`` or ``127.0.0.1:50051``. With
    ``tls`` the channel uses TLS: ``root_certificates`` replaces the system
    roots, ``client_certificate`` and ``client_key`` (together) add a client
    certificate, ``tls_server_name`` overrides the name the server certificate
    is checked against. ``timeout`` is the default deadline of every call in
    seconds; ``None`` leaves each client its own default. Each client object
    owns one retry budget built from the ``retry_budget_*`` fields.
    """

    target: str = field(default_factory=_default_target)
    tls: bool = False
    root_certificates: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    tls_server_name: str | None = None
    timeout: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    backoff_multiplier: float = DEFAULT_BACKOFF_MULTIPLIER
    retry_budget_ratio: float = DEFAULT_RETRY_BUDGET_RATIO
    retry_budget_min_per_second: float = DEFAULT_RETRY_BUDGET_MIN_PER_SECOND

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target must not be empty")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together")
        tls_only = (
            self.root_certificates,
            self.client_certificate,
            self.client_key,
            self.tls_server_name,
        )
        if not self.tls and any(value is not None for value in tls_only):
            raise ValueError("TLS settings need tls=True")
        # Builds the policy once so bad retry settings fail here, not on the first call.
        self.retry_policy()

    def retry_policy(self) -> RetryPolicy:
        """The retry policy these options describe."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            initial_backoff=self.initial_backoff,
            max_backoff=self.max_backoff,
            backoff_multiplier=self.backoff_multiplier,
        )

    def retrier(self) -> Retrier:
        """A retrier with a fresh retry budget, for one client object."""
        return Retrier(
            policy=self.retry_policy(),
            budget=RetryBudget(
                ratio=self.retry_budget_ratio, min_per_second=self.retry_budget_min_per_second
            ),
        )


def create_channel(options: ChannelOptions) -> grpc.Channel:
    """A blocking channel to ``options.target``."""
    if options.tls:
        return grpc.secure_channel(
            options.target, _credentials(options), options=_channel_arguments(options)
        )
    return grpc.insecure_channel(options.target, options=_channel_arguments(options))


def create_aio_channel(
    options: ChannelOptions, *, own_connection: bool = False
) -> grpc.aio.Channel:
    """An ``asyncio`` channel to ``options.target``.

    Channels to one target normally share one connection; ``own_connection``
    gives this channel a connection of its own (load generators use it to
    spread load over several connections).
    """
    arguments: list[tuple[str, str | int]] = [*_channel_arguments(options)]
    if own_connection:
        arguments.append(("grpc.use_local_subchannel_pool", 1))
    if options.tls:
        return grpc.aio.secure_channel(options.target, _credentials(options), options=arguments)
    return grpc.aio.insecure_channel(options.target, options=arguments)


def _credentials(options: ChannelOptions) -> grpc.ChannelCredentials:
    def read(path: Path | None) -> bytes | None:
        return None if path is None else path.read_bytes()

    return grpc.ssl_channel_credentials(
        root_certificates=read(options.root_certificates),
        private_key=read(options.client_key),
        certificate_chain=read(options.client_certificate),
    )


NO_BANDWIDTH_PROBES: Final = ("grpc.http2.bdp_probe", 0)
"""On every channel. grpc-core pings the server now and then as answers
arrive, to size its windows for bulk transfers; the service's answers are
small, so that buys nothing, and each ping costs the server a read and a
reply. On an open ``WatchChanges`` stream it was a ping for about every
third heartbeat (docs/BENCHMARKS.md)."""


def _channel_arguments(options: ChannelOptions) -> list[tuple[str, str | int]]:
    if options.tls_server_name is None:
        return [NO_BANDWIDTH_PROBES]
    return [NO_BANDWIDTH_PROBES, ("grpc.ssl_target_name_override", options.tls_server_name)]


class ChannelClient:
    """What every blocking client shares: its options, default deadline,
    retrier and one channel, closed by ``close`` or on leaving ``with``."""

    def __init__(self, options: ChannelOptions | None, *, default_timeout: float) -> None:
        self._options = options if options is not None else ChannelOptions()
        self._timeout = self._options.timeout or default_timeout
        self._retrier = self._options.retrier()
        self._channel = create_channel(self._options)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncChannelClient:
    """The ``asyncio`` form of :class:`ChannelClient`; create it inside the event loop."""

    def __init__(self, options: ChannelOptions | None, *, default_timeout: float) -> None:
        self._options = options if options is not None else ChannelOptions()
        self._timeout = self._options.timeout or default_timeout
        self._retrier = self._options.retrier()
        self._channel = create_aio_channel(self._options)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
