"""Checks per second of ``CachingAuthorizeClient`` answering from memory, in one thread.

    python -m bench.caching_client [--calls N] [--repeats R]

Starts the real server (``bench.suite.started``), creates a key, opens a
caching client and, once its ``WatchChanges`` stream is fresh, times
``check`` on an answer in memory: with the raw key and with a
``Bearer`` header. The baseline is the hit's own work outside any client
(one dict lookup keyed by key, method, path and address, one
``time.monotonic()``, two comparisons), so the difference is the method
call and the counter. The plain ``AuthorizeClient``, which asks the server
every time, is shown for scale. Each figure is the best of ``--repeats``
loops of ``--calls`` checks; every timed caching check is asserted to be a
hit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from bench.suite import create_key, started
from clients import AuthorizeClient, CachingAuthorizeClient, ChannelOptions

METHOD, PATH = "GET", "/api/v4/users"
PLAIN_CALLS = 2_000


def best_rate(check: Callable[..., Any], key: str, *, calls: int, repeats: int) -> float:
    """The best checks per second over ``repeats`` loops of ``calls``."""
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(calls):
            check(key, METHOD, PATH)
        best = max(best, calls / (time.perf_counter() - began))
    return best


def baseline_check(secret: str) -> Callable[..., Any]:
    """The hit's own work, outside any client."""
    entries = {(secret, METHOD, PATH, ""): (monotonic() + 3600, object(), "key")}
    fresh_until = monotonic() + 3600

    def check(key: str, method: str, path: str, client_ip: str = "") -> object:
        entry = entries.get((key, method, path, client_ip))
        if entry is not None:
            now = monotonic()
            if now < entry[0] and now < fresh_until:
                return entry[1]
        return None

    return check


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.caching_client")
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    def row(label: str, rate: float) -> None:
        print(f"{label:<48}{rate:>14,.0f} /s {1e9 / rate:>10,.0f} ns each")

    with started("caching-client", variant="real") as server:
        secret = create_key(server, ["users.read"])
        options = ChannelOptions(target=server.target, timeout=5.0)
        row(
            "baseline: lookup, monotonic, two comparisons",
            best_rate(baseline_check(secret), secret, calls=args.calls, repeats=args.repeats),
        )
        with CachingAuthorizeClient(options) as caching:
            if not caching.wait_fresh(5.0):
                raise RuntimeError("the WatchChanges stream did not open")
            for label, key in (("raw key", secret), ("Bearer header", f"Bearer {secret}")):
                if not caching.check(key, METHOD, PATH).allowed:
                    raise RuntimeError("the benchmark key is not allowed")
                hits = caching.hits
                rate = best_rate(caching.check, key, calls=args.calls, repeats=args.repeats)
                if caching.hits - hits != args.calls * args.repeats:
                    raise RuntimeError("a timed check was not answered from memory")
                row(f"CachingAuthorizeClient.check, hit ({label})", rate)
        with AuthorizeClient(options) as plain:
            rate = best_rate(plain.check, secret, calls=PLAIN_CALLS, repeats=args.repeats)
            row("AuthorizeClient.check (asks the server)", rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
