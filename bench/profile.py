"""A cProfile of the real server under saturated cached-key ``Check`` load.

Starts ``bench.serve --profile`` pinned to the server CPU, drives it with
h2load on the other, stops it and prints the functions with the most own
time (``tottime``), then the cumulative time of the hot path's own frames.
"""

from __future__ import annotations

import argparse
import io
import pstats
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import h2
from bench.suite import CHECK, CLIENTS, LOAD_CPU, STREAMS, check_body, create_key, started

TOP = 18
HOT_PATH = ("server/api/authorize.py", "server/domain/", "server/cache.py", "server/api/auth.py")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as scratch:
        output = Path(scratch) / "server.prof"
        with started("profiled", variant="real", profile=output) as server:
            body = check_body(create_key(server, ["campaigns.read"]))
            result = h2.run(
                server.url(CHECK),
                body,
                clients=CLIENTS,
                streams=STREAMS,
                duration=args.duration,
                cpu=LOAD_CPU,
            )
        print(f"{result.rps:,.0f} req/s under the profiler")
        stats = pstats.Stats(str(output), stream=io.StringIO())
        total = stats.total_tt  # type: ignore[attr-defined]
        rows = sorted(
            stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda item: item[1][2],
            reverse=True,
        )
        print(f"{'own s':>8} {'own %':>6} {'calls':>9}  function")
        for (file, line, name), (_, calls, tottime, _, _) in rows[:TOP]:
            where = _where(file, line, name)
            print(f"{tottime:8.3f} {100 * tottime / total:5.1f}% {calls:9d}  {where}")
        print("hot path frames (cumulative, own code):")
        for (file, line, name), (_, calls, tottime, cumtime, _) in rows:
            if any(part in file for part in HOT_PATH) and cumtime / total > 0.005:
                print(
                    f"{cumtime:8.3f} {100 * cumtime / total:5.1f}% {calls:9d}  "
                    f"{_where(file, line, name)} (own {100 * tottime / total:.1f}%)"
                )
    return 0


def _where(file: str, line: int, name: str) -> str:
    if file == "~":
        return name
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{file}:{line}({name})"


if __name__ == "__main__":
    sys.exit(main())
