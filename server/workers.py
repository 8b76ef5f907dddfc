"""``apikeys-server --workers N``: N server processes sharing one port.

The caller reserves the ports (:class:`PortReservation`), prepares and
migrates once in this (parent) process, then :func:`supervise` forks the
workers. It must run before any event loop or gRPC object exists in the
parent: gRPC's core does not survive a fork. Each worker binds the port with
``SO_REUSEPORT``, so the kernel spreads incoming connections over them, and
runs its own cache and change follower; the change feed keeps the workers'
caches in step exactly as it does between replicas.

``SO_REUSEPORT`` alone would let a second server started on the same port
join the group and take part of the connections. The reservation prevents
that: it proves the port free with a bind that a reuse-port group refuses,
then stays bound for the supervisor's life, marked reuse-port only after the
bind, so that the workers can join it and every later bind without
``SO_REUSEPORT`` (another ``apikeys-server`` reserving the port, or a single
one binding it) fails. What the kernel still allows, and nothing in this
process can refuse, is a process of the same user that sets ``SO_REUSEPORT``
itself before binding: Linux admits it to the group.

The parent only supervises. A worker that exits is started again after a
delay that grows while workers keep failing quickly (one that exits with
status 2, a configuration error, stops everything: it would fail again).
SIGTERM or SIGINT is forwarded to every worker, which drains as a single
server does; any still running after ``stop_timeout`` is killed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

log = logging.getLogger(__name__)

RESTART_FIRST_DELAY_S = 0.5
RESTART_MAX_DELAY_S = 10.0
# A worker that ran this long was healthy: its next restart is prompt again.
HEALTHY_AFTER_S = 30.0
CONFIGURATION_ERROR_STATUS = 2

_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_WATCHED = frozenset({signal.SIGCHLD, *_STOP_SIGNALS})


_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - reserved, as the server binds


class PortUnavailable(Exception):
    """An address the workers would listen on cannot be reserved."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(f"{name}: {reason}")


class PortReservation:
    """Listen addresses held for this server's workers and no one else.

    Each address is bound with ``SO_REUSEADDR`` alone, which fails when any
    socket listens there (reuse-port group or not) but tolerates connections
    of an earlier server still in TIME_WAIT. Once bound, the socket drops
    ``SO_REUSEADDR`` and takes ``SO_REUSEPORT``: the workers, binding with
    ``SO_REUSEPORT`` as the same user, join it, while any bind without
    ``SO_REUSEPORT`` keeps failing, also while every worker is down between
    restarts. The socket never listens, so it takes no connections.
    """

    def __init__(self, sockets: Sequence[socket.socket]) -> None:
        self._sockets = list(sockets)

    @classmethod
    def claim(cls, addresses: Mapping[str, tuple[str, int]]) -> PortReservation:
        """Reserves each named (host, port); ``PortUnavailable`` carries the
        name of the first that cannot be had."""
        reservation = cls([])
        try:
            for name, (host, port) in addresses.items():
                for family, address, dual_stack in _bind_addresses(host, port):
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    reservation._sockets.append(sock)
                    _reserve(sock, address, dual_stack=dual_stack, name=name)
        except BaseException:
            reservation.close()
            raise
        return reservation

    def close(self) -> None:
        """Releases the addresses."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


def _reserve(sock: socket.socket, address: tuple[str, int], *, dual_stack: bool, name: str) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        reason = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise PortUnavailable(name, f"cannot bind {address[0]}:{address[1]}: {reason}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def _bind_addresses(host: str, port: int) -> list[tuple[int, tuple[str, int], bool]]:
    """(family, address, dual stack) of each socket gRPC binds for ``host``:
    one dual-stack socket for a wildcard host where IPv6 exists, else one
    per address the host resolves to."""
    if host in _WILDCARD_HOSTS:
        if socket.has_ipv6 and _ipv6_available():
            return [(socket.AF_INET6, ("::", port), True)]
        return [(socket.AF_INET, ("0.0.0.0", port), False)]  # noqa: S104
    found: list[tuple[int, tuple[str, int], bool]] = []
    for family, _, _, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        entry = (int(family), (str(address[0]), int(address[1])), False)
        if entry not in found:
            found.append(entry)
    return found


def _ipv6_available() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


class _Supervisor:
    def __init__(
        self, count: int, worker: Callable[[], int], on_exit: Callable[[int], None]
    ) -> None:
        self._count = count
        self._worker = worker
        self._on_exit = on_exit
        self._running: dict[int, int] = {}  # pid -> slot
        self._started: dict[int, float] = {}  # slot -> monotonic start
        self._delays: dict[int, float] = {}  # slot -> next restart delay
        self._due: dict[int, float] = {}  # slot -> monotonic restart time
        self.status = 0

    def start_all(self) -> None:
        for slot in range(self._count):
            self._start(slot)

    def run(self) -> int | None:
        """Supervises until a stop signal (returned) or a configuration
        error (``None``; ``status`` says which)."""
        while True:
            timeout = None
            if self._due:
                timeout = max(0.0, min(self._due.values()) - time.monotonic())
            info = (
                signal.sigwaitinfo(_WATCHED)
                if timeout is None
                else signal.sigtimedwait(_WATCHED, timeout)
            )
            if info is not None and info.si_signo in _STOP_SIGNALS:
                return info.si_signo
            if not self._reap_and_schedule():
                return None
            now = time.monotonic()
            for slot, due in list(self._due.items()):
                if due <= now:
                    del self._due[slot]
                    self._start(slot)

    def stop(self, signum: int, timeout: float) -> None:
        for pid in self._running:
            _signal(pid, signum)
        deadline = time.monotonic() + timeout
        while self._running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            signal.sigtimedwait({signal.SIGCHLD}, remaining)
            self._reap()
        for pid in list(self._running):
            log.warning("worker did not stop in time; killing it", extra={"pid": pid})
            _signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self._running.clear()

    def _start(self, slot: int) -> None:
        pid = fork(self._worker)
        self._running[pid] = slot
        self._started[slot] = time.monotonic()
        log.info("worker started", extra={"pid": pid, "worker": slot})

    def _reap(self) -> list[tuple[int, int, int]]:
        """(pid, slot, exit status) of each worker that has exited."""
        exited = []
        while self._running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            slot = self._running.pop(pid, None)
            if slot is not None:
                self._on_exit(pid)
                exited.append((pid, slot, os.waitstatus_to_exitcode(status)))
        return exited

    def _reap_and_schedule(self) -> bool:
        """Schedules restarts of exited workers; false on a configuration
        error."""
        now = time.monotonic()
        for pid, slot, code in self._reap():
            if code == CONFIGURATION_ERROR_STATUS:
                log.error("worker stopped on a configuration error", extra={"pid": pid})
                self.status = code
                return False
            delay = self._delays.get(slot, RESTART_FIRST_DELAY_S)
            if now - self._started[slot] >= HEALTHY_AFTER_S:
                delay = RESTART_FIRST_DELAY_S
            self._delays[slot] = min(delay * 2, RESTART_MAX_DELAY_S)
            self._due[slot] = now + delay
            log.warning(
                "worker exited; restarting it",
                extra={"pid": pid, "worker": slot, "status": code, "delay": delay},
            )
        return True


def supervise(
    count: int,
    worker: Callable[[], int],
    *,
    stop_timeout: float,
    on_exit: Callable[[int], None] = lambda _pid: None,
) -> int:
    """Runs ``worker`` in ``count`` forked processes until SIGTERM or SIGINT,
    restarting any that exits (``on_exit`` is told its pid); returns the
    exit status for the parent."""
    # Blocked rather than handled: the loop takes them with sigwaitinfo, so
    # none can arrive between checking for one and waiting for the next.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    supervisor = _Supervisor(count, worker, on_exit)
    try:
        supervisor.start_all()
        signum = supervisor.run()
        log.info("stopping workers")
        supervisor.stop(signal.SIGTERM if signum is None else signum, stop_timeout)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return supervisor.status


def fork(run: Callable[[], int]) -> int:
    """Runs ``run`` in a forked process; returns its pid."""
    pid = os.fork()
    if pid == 0:
        _run_child(run)
    return pid


def _run_child(worker: Callable[[], int]) -> NoReturn:
    """The forked worker's whole life; never returns into the parent's code."""
    status = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        status = worker()
    except BaseException:
        log.exception("worker failed")
    finally:
        os._exit(status)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
