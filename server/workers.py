"""``apikeys-server --workers N``: N server processes sharing one port.

The caller prepares and migrates once in this (parent) process, then
:func:`supervise` forks the workers. It must run before any event loop or
gRPC object exists in the parent: gRPC's core does not survive a fork. Each
worker binds the port with ``SO_REUSEPORT``, so the kernel spreads incoming
connections over them, and runs its own cache and change follower; the change
feed keeps the workers' caches in step exactly as it does between replicas.

The parent only supervises. A worker that exits is started again after a
delay that grows while workers keep failing quickly (one that exits with
status 2, a configuration error, stops everything: it would fail again).
SIGTERM or SIGINT is forwarded to every worker, which drains as a single
server does; any still running after ``stop_timeout`` is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import NoReturn

log = logging.getLogger(__name__)

RESTART_FIRST_DELAY_S = 0.5
RESTART_MAX_DELAY_S = 10.0
# A worker that ran this long was healthy: its next restart is prompt again.
HEALTHY_AFTER_S = 30.0
CONFIGURATION_ERROR_STATUS = 2

_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_WATCHED = frozenset({signal.SIGCHLD, *_STOP_SIGNALS})


class _Supervisor:
    def __init__(self, count: int, worker: Callable[[], int]) -> None:
        self._count = count
        self._worker = worker
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
        pid = os.fork()
        if pid == 0:
            _run_child(self._worker)
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


def supervise(count: int, worker: Callable[[], int], *, stop_timeout: float) -> int:
    """Runs ``worker`` in ``count`` forked processes until SIGTERM or SIGINT,
    restarting any that exits; returns the exit status for the parent."""
    # Blocked rather than handled: the loop takes them with sigwaitinfo, so
    # none can arrive between checking for one and waiting for the next.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    supervisor = _Supervisor(count, worker)
    try:
        supervisor.start_all()
        signum = supervisor.run()
        log.info("stopping workers")
        supervisor.stop(signal.SIGTERM if signum is None else signum, stop_timeout)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return supervisor.status


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
