"""Legitimate ``Check`` calls during each attack, next to the same calls on a quiet server.

    python -m bench.under_attack [--calls 200]

One real server (``bench.serve``, pinned to the server CPU) is attacked in
turn by each attack of ``bench.attacks`` running in its own process on the
load CPU, and by ``h2load -c 4 -m 100`` for overload. Meanwhile one client
makes paced ``Check`` calls with a 100 ms deadline on a connection of its
own; the table gives their success rate and p99 for each attack and for a
quiet run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import attacks, h2
from bench.suite import CHECK, LOAD_CPU, BenchServer, Report, check_body, create_key, started

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CALLS = 200
INTERVAL = 0.025
# Each attack outlasts the legitimate calls made during it by this much.
ATTACK_MARGIN = 5.0


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
        rows.append(
            AttackRow(
                attack=f"partly-sent streams, {connections} x 100",
                legit=result,
                detail=f"{sent['streams_reset']} of {sent['streams_opened']} streams refused",
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
    flood = h2.start(
        server.url(CHECK),
        check_body(key),
        clients=4,
        streams=100,
        duration=float(attack_seconds),
        cpu=LOAD_CPU,
    )
    time.sleep(1.0)
    result = legit()
    flooded = h2.finish(flood, timeout=float(attack_seconds) + 30)
    rows.append(
        AttackRow(
            attack="overload, h2load -c 4 -m 100",
            legit=result,
            detail=f"{flooded.rps:,.0f} flood req/s",
        )
    )
    return rows


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


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.under_attack")
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    args = parser.parse_args(argv)
    report = Report()
    under_attack(report, calls=args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
