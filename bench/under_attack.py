"""Legitimate ``Check`` calls during each attack, next to the same calls on a quiet server.

    python -m bench.under_attack [--calls 200]

One real server (``bench.serve``, pinned to the server CPU) is attacked in
turn by each attack of ``bench.attacks`` running in its own process on the
load CPU, and by ``h2load -c 4 -m 100`` for overload. Meanwhile one client
makes paced ``Check`` calls with a 100 ms deadline on a connection of its
own; the table gives their success rate and p99 for each attack and for a
quiet run.

    python -m bench.under_attack --queue [--runs 3]

only the overload, to show where a legitimate call waits: the flood's rate
and the legitimate calls' p50 and p90 (with a 1 s deadline, so that slow
calls are measured rather than cut off) on a default server, one with 16
streams per connection and one that refuses nearly every flood call
(``--max-concurrent-rpcs 1``), servers alternating, ``--runs`` of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import attacks, h2
from bench.suite import (
    CHECK,
    LOAD_CPU,
    BenchServer,
    Figure,
    Report,
    check_body,
    create_key,
    started,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CALLS = 200
INTERVAL = 0.025
# Each attack outlasts the legitimate calls made during it by this much.
ATTACK_MARGIN = 5.0
# The overload: h2load's connections and streams on each.
OVERLOAD_CLIENTS = 4
OVERLOAD_STREAMS = 100


@dataclass(frozen=True, kw_only=True, slots=True)
class AttackRow:
    """The legitimate calls measured during one attack, and what the attack did."""

    attack: str
    legit: attacks.LegitResult
    detail: str


def measure(server: BenchServer, key: str, calls: int) -> list[AttackRow]:
    """The legitimate calls on a quiet server, then during each attack."""
    attack_seconds = str(ATTACK_MARGIN + 2 * calls * INTERVAL)

    def legit() -> attacks.LegitResult:
        return attacks.legit_checks(server.target, key, calls=calls, interval=INTERVAL)

    rows = [AttackRow(attack="quiet", legit=legit(), detail="")]
    for connections in (10, 100):
        before = server.resident_mib()
        with attacks.attacker(
            server.target,
            "partial",
            "--connections",
            str(connections),
            "--streams",
            "100",
            "--duration",
            attack_seconds,
        ) as process:
            sent = attacks.report_of(process)
            result = legit()
            grown = server.resident_mib() - before
        rows.append(
            AttackRow(
                attack=f"partly-sent streams, {connections} x 100",
                legit=result,
                detail=f"{sent['streams_reset']} of {sent['streams_opened']} streams refused, "
                f"resident memory +{grown:.0f} MiB",
            )
        )
    with attacks.attacker(server.target, "rapid-reset", "--duration", attack_seconds) as process:
        time.sleep(0.5)
        result = legit()
        reset = attacks.report_of(process)
    rate = float(str(reset["streams"])) / float(str(reset["seconds"]))
    rows.append(
        AttackRow(attack="rapid reset, 1 connection", legit=result, detail=f"{rate:,.0f} streams/s")
    )
    result, flood = overloaded(server, key, float(attack_seconds), legit)
    rows.append(
        AttackRow(
            attack="overload, h2load -c 4 -m 100",
            legit=result,
            detail=f"{flood.rps:,.0f} flood req/s",
        )
    )
    return rows


def overloaded(
    server: BenchServer,
    key: str,
    duration: float,
    legit: Callable[[], attacks.LegitResult],
) -> tuple[attacks.LegitResult, h2.H2Result]:
    """``legit()`` while ``h2load -c 4 -m 100`` on the load CPU floods
    ``server`` with checks of ``key`` for ``duration`` seconds, starting a
    second into the flood; its result and the flood's."""
    flood = h2.start(
        server.url(CHECK),
        check_body(key),
        clients=OVERLOAD_CLIENTS,
        streams=OVERLOAD_STREAMS,
        duration=duration,
        cpu=LOAD_CPU,
    )
    time.sleep(1.0)
    result = legit()
    return result, h2.finish(flood, timeout=duration + 30)


def table(report: Report, rows: Sequence[AttackRow]) -> None:
    """The rows as one table."""
    report.row("", "legit Check OK (100 ms)", "legit p99 ms", "the attack")
    for row in rows:
        report.row(
            row.attack,
            f"{row.legit.succeeded}/{row.legit.calls} ({row.legit.success_rate:.1%})",
            f"{row.legit.p99_ms:.1f}",
            row.detail,
        )


def under_attack(report: Report, *, calls: int) -> None:
    """The suite's section: one server, every attack, a verdict per attack."""
    report.section(
        f"legitimate Check during attacks ({calls} paced calls, 100 ms deadline, own connection)"
    )
    with started("attacked", variant="real") as server:
        rows = measure(server, create_key(server, ["campaigns.read"]), calls)
    table(report, rows)
    for row in rows[1:]:
        rate = row.legit.success_rate
        report.target(f"legit checks >= 90% during {row.attack}", rate >= 0.9, f"{rate:.1%}")


QUEUE_SERVERS: dict[str, tuple[str, ...]] = {
    "100 streams per connection (default)": (),
    "16 streams per connection": ("--max-streams-per-connection", "16"),
    "100 streams, nearly every call refused": ("--max-concurrent-rpcs", "1"),
}
QUEUE_FLOOD_SECONDS = 6.0
QUEUE_CALLS = 40


def overload_queue(report: Report, *, runs: int) -> None:
    """The flood's rate and the legitimate latency, by server setting."""
    report.section(
        "legitimate Check under h2load -c 4 -m 100 "
        f"({QUEUE_CALLS} paced calls, 1 s deadline, own connection; {runs} runs each)"
    )
    report.row("server", "flood req/s", "legit p50 ms", "legit p90 ms", "legit OK")
    names = list(QUEUE_SERVERS)
    figures: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in names}
    for run in range(runs):
        for name in names if run % 2 == 0 else names[::-1]:
            figures[name].append(_flooded(QUEUE_SERVERS[name]))
    for name, measured in figures.items():
        rps, p50, p90, ok = (Figure(values=column) for column in zip(*measured, strict=True))
        report.row(
            name,
            rps.described(),
            p50.described(1),
            p90.described(1),
            f"{ok.median:.0f}/{QUEUE_CALLS}",
        )
    report.note(
        "a legitimate call waits behind the flood's open calls (4 x streams per connection) "
        "in grpc-core's queue, about that many divided by the flood's rate; a call refused "
        "past its connection's share costs the server about what an answer does"
    )


def _flooded(server_args: Sequence[str]) -> tuple[float, float, float, int]:
    with started("queue", variant="real", server_args=server_args) as server:
        key = create_key(server, ["campaigns.read"])
        legit, flood = overloaded(
            server,
            key,
            QUEUE_FLOOD_SECONDS,
            lambda: attacks.legit_checks(
                server.target, key, calls=QUEUE_CALLS, deadline=1.0, interval=0.03
            ),
        )
    ordered = sorted(legit.latencies_ms) or [float("nan")]
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return flood.rps, statistics.median(ordered), p90, legit.succeeded


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.under_attack")
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    parser.add_argument("--queue", action="store_true", help="only the overload, by streams")
    parser.add_argument("--runs", type=int, default=3, help="runs of each server with --queue")
    args = parser.parse_args(argv)
    report = Report()
    if args.queue:
        overload_queue(report, runs=args.runs)
    else:
        under_attack(report, calls=args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
