"""A benchmark server process: the real ``apikeys-server``, or the no-op baseline.

    python -m bench.serve --variant noop --stats FILE -- --listen 127.0.0.1:PORT ...

Everything after ``--`` goes to ``apikeys-server`` unchanged, so both variants
run the production entry point with the same grpc.aio options, interceptor
chain, health and reflection services and event loop. The baseline passes the
server a ``Wiring`` whose ``Authorize`` servicer returns a constant answer,
so the difference between the two is exactly the work of a ``Check``.
``--no-interceptor`` builds the server without its interceptor, to measure
what the admin interceptor costs calls that it passes through.

``--stats FILE`` keeps FILE holding the number of SQL statements the store
has run (a ``before_cursor_execute`` listener on the engine of the store the
server opens), rewritten every 100 ms. ``--profile FILE`` writes cProfile
statistics of the whole process when it stops.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import event

from server.admin_tokens import AdminTokenVerifier
from server.app import Storage, Wiring
from server.cli import main as server_main
from server.store import open_store
from voiso.apikeys.v1 import authorize_pb2, authorize_pb2_grpc

STATS_INTERVAL = 0.1

# What the real server answers for the benchmark's allowed check, so the
# baseline serializes and sends a message of the same size.
BASELINE_RESPONSE = authorize_pb2.CheckResponse(
    allowed=True,
    reason=authorize_pb2.REASON_ALLOWED,
    key_id="key_" + "0" * 24,
    contact_center_id="cc-bench",
    granted_scopes=["campaigns.read"],
    required_scopes=["campaigns.read"],
    route="GET /api/v4/campaigns",
    revision=1,
    cache_ttl={"seconds": 30},
)
BASELINE_BATCH = authorize_pb2.CheckBatchResponse(results=[BASELINE_RESPONSE] * 100)


class NoopAuthorize(authorize_pb2_grpc.AuthorizeServicer):
    """Answers every call with a constant message, doing no work at all."""

    def __init__(self, _authorizer: object, _watchers: object = None) -> None:
        pass

    async def Check(self, request: Any, context: Any) -> authorize_pb2.CheckResponse:
        return BASELINE_RESPONSE

    async def CheckBatch(self, request: Any, context: Any) -> authorize_pb2.CheckBatchResponse:
        return BASELINE_BATCH


def _no_interceptors(_verifier: AdminTokenVerifier) -> Sequence[grpc.aio.ServerInterceptor]:
    return ()


def variant(wiring: Wiring, *, noop: bool = False, interceptors: bool = True) -> Wiring:
    """``wiring`` with the no-op ``Authorize`` servicer and/or without interceptors."""
    if noop:
        wiring = dataclasses.replace(wiring, authorize_servicer=NoopAuthorize)
    if not interceptors:
        wiring = dataclasses.replace(wiring, interceptors=_no_interceptors)
    return wiring


class StatementCounter:
    """Counts the SQL statements run by the stores it opens."""

    def __init__(self) -> None:
        self.count = 0

    def wiring(self, wiring: Wiring) -> Wiring:
        """``wiring`` opening its store through this counter."""
        return dataclasses.replace(wiring, open_store=self._open_store)

    async def _open_store(self, database_url: str) -> Storage:
        store = await open_store(database_url)
        event.listen(store.engine.sync_engine, "before_cursor_execute", self._count)
        return store

    def _count(self, *_: Any) -> None:
        self.count += 1

    def publish(self, stats: Path) -> None:
        """Keeps ``stats`` holding the count, rewritten every ``STATS_INTERVAL``."""

        def publish_forever() -> None:
            partial = stats.with_suffix(".tmp")
            while True:
                partial.write_text(str(self.count))
                os.replace(partial, stats)
                time.sleep(STATS_INTERVAL)

        threading.Thread(target=publish_forever, name="bench-stats", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the chosen variant until SIGTERM; returns its exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("--variant", choices=("real", "noop"), default="real")
    parser.add_argument("--no-interceptor", action="store_true")
    parser.add_argument("--stats", type=Path)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("server_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    server_args = [arg for arg in args.server_args if arg != "--"]
    wiring = variant(Wiring(), noop=args.variant == "noop", interceptors=not args.no_interceptor)
    if args.stats is not None:
        counter = StatementCounter()
        counter.publish(args.stats)
        wiring = counter.wiring(wiring)
    if args.profile is None:
        return server_main(server_args, wiring=wiring)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return server_main(server_args, wiring=wiring)
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(main())
