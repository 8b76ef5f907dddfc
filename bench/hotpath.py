"""The cached-key ``Check`` in-process, step by step, next to the no-op servicer.

    python -m bench.hotpath [--calls N] [--repeats R] [--json]

Wires the production ``AuthorizeServicer`` -> ``Authorizer`` ->
``CachedKeyStore`` with the packaged route table and a key already in the
cache, then times, per call: the servicer's whole ``Check`` and the no-op
baseline's (each with the request parsed from bytes and the response
serialized, as gRPC does), and the steps of the decision on their own; the
rest of the difference is coroutine frames and the memo lookups. Every figure
is the median of ``--repeats`` loops of ``--calls`` calls, each step timed
with the cost of one Python call around it.

These are warm-cache figures: in the running server, gRPC's core runs between
two checks and evicts the caches, so each step costs more there (the profile
in ``bench.profile`` shows the share of the server's time). What they give is
a stable measure of the service's own work on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from bench.serve import NoopAuthorize
from server.api.authorize import AuthorizeServicer
from server.cache import CachedKeyStore
from server.domain.authorize import Authorizer
from server.domain.keys import KeyHasher, generate_key, has_key_format, last4
from server.domain.records import KeyRecord
from server.domain.routes import RouteTable
from server.domain.scopes import SCOPE_CATALOG
from server.domain.usage import UsageRecorder
from voiso.apikeys.v1 import authorize_pb2

METHOD, PATH = "GET", "/api/v4/campaigns"


# Never reached: every measured check is a cache hit.
STORE_TIMEOUT_S = 0.5


class _NoDeadline:
    """The servicer context of a call without a deadline."""

    def time_remaining(self) -> float | None:
        return None


class _OneKeyStore:
    """The store behind the cache; a cache hit never reaches it."""

    def __init__(self, record: KeyRecord) -> None:
        self._record = record

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        return self._record if lookup_hash == self._record.lookup_hash else None


def _finish(coroutine: Coroutine[Any, Any, Any]) -> Any:
    # A cached check never suspends, so one send() runs it to the end.
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the check suspended: the key was not served from the cache")


def _per_call_us(step: Callable[[], object], calls: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(calls):
            step()
        samples.append((time.perf_counter() - began) / calls * 1e6)
    return statistics.median(samples)


def measure(calls: int, repeats: int) -> dict[str, float]:
    """Microseconds per call of each step and of the two servicers."""
    key = generate_key()
    hasher = KeyHasher(b"bench-hmac-secret".ljust(32, b"."))
    routes = RouteTable.load(known_scopes=SCOPE_CATALOG.keys())
    now = datetime.now(UTC)
    record = KeyRecord(
        id="key_" + "0" * 24,
        contact_center_id="cc-bench",
        name="bench",
        description="",
        scopes=("campaigns.read",),
        lookup_hash=hasher.lookup_hash(key),
        last4=last4(key),
        secret_ciphertext=b"",
        encryption_key_id="bench",
        create_time=now,
        update_time=now,
        last_used_time=None,
        created_by="bench",
    )
    store = _OneKeyStore(record)
    cache = CachedKeyStore(
        store,  # type: ignore[arg-type]
        ttl=3600,
        size=1000,
        negative_ttl=60,
        negative_size=1000,
    )
    usage = UsageRecorder(cache, interval=3600)
    authorizer = Authorizer(
        keys=cache, hasher=hasher, routes=routes, usage=usage, store_timeout=STORE_TIMEOUT_S
    )
    real, noop = AuthorizeServicer(authorizer), NoopAuthorize(authorizer)
    body = authorize_pb2.CheckRequest(key=key, method=METHOD, path=PATH).SerializeToString()
    parse = authorize_pb2.CheckRequest.FromString

    def servicer_check(servicer: Any) -> Callable[[], object]:
        def step() -> object:
            response = _finish(servicer.Check(parse(body), _NoDeadline()))
            return response.SerializeToString()

        return step

    # A miss runs the store query in a task: load the key on a loop first.
    # The first call then fills the memos.
    asyncio.run(cache.find_by_lookup_hash(record.lookup_hash))
    first = authorize_pb2.CheckResponse.FromString(servicer_check(real)())
    if first.reason != authorize_pb2.REASON_ALLOWED:
        raise RuntimeError(f"expected REASON_ALLOWED, got {first.reason}")
    request = parse(body)
    match = routes.match(METHOD, PATH)
    lookup_hash = hasher.lookup_hash(key)
    decision = _finish(authorizer.check(key, METHOD, PATH))
    if match is None or not decision.allowed:
        raise RuntimeError("the benchmark check is not an allowed, routed check")
    steps: dict[str, Callable[[], object]] = {
        "servicer Check, real": servicer_check(real),
        "servicer Check, no-op": servicer_check(noop),
        "  request fields": lambda: (request.key, request.method, request.path),
        "  key format": lambda: has_key_format(key),
        "  route (memo hit)": lambda: routes.match(METHOD, PATH),
        "  HMAC lookup hash": lambda: hasher.lookup_hash(key),
        "  cache hit": lambda: cache.cached(lookup_hash),
        "  last-used record": lambda: usage.record(record.id),
    }
    return {name: _per_call_us(step, calls, repeats) for name, step in steps.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(args.calls, args.repeats)
    if args.json:
        print(json.dumps(figures))
        return 0
    for name, micros in figures.items():
        print(f"{name:<28} {micros:7.2f} us")
    own = figures["servicer Check, real"] - figures["servicer Check, no-op"]
    steps = sum(micros for name, micros in figures.items() if name.startswith("  "))
    print(f"{'  the rest':<28} {own - steps:7.2f} us  (frames, decision and response memos)")
    print(f"{'own work (real - no-op)':<28} {own:7.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
