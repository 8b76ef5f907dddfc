"""HTTP/2 rapid reset (HEADERS then RST_STREAM, in a loop, from one
connection) cannot starve legitimate checks on other connections; Envoy in
front closes the attacker's connection."""

from __future__ import annotations

import time

from bench import attacks
from bench.attacks import attacker, report_of
from tests.attacks.processes import attacked_server, envoy_in_front

ATTACK_SECONDS = 6.0
LEGIT_CHECKS = 100


def test_checks_keep_succeeding_during_a_rapid_reset_against_the_service() -> None:
    with (
        attacked_server() as attacked,
        attacker(attacked.target, "rapid-reset", "--duration", str(ATTACK_SECONDS)) as attack,
    ):
        # Let the attack reach full speed first.
        time.sleep(0.5)
        legit = attacks.legit_checks(
            attacked.target, attacked.key, calls=LEGIT_CHECKS, interval=0.04
        )
        report = report_of(attack)
    # The attack ran at full speed for the whole time the checks were made.
    assert report["streams"] > 10_000
    assert report["closed"] is None
    assert legit.success_rate >= 0.9, legit.codes


def test_envoy_in_front_closes_the_attackers_connection() -> None:
    with attacked_server() as attacked, envoy_in_front(attacked.target) as front:
        with attacker(front, "rapid-reset", "--duration", str(ATTACK_SECONDS)) as attack:
            report = report_of(attack)
        legit = attacks.legit_checks(front, attacked.key, calls=LEGIT_CHECKS)
    assert report["closed"] is not None
    # Closed long before the attack's time was up, after a few hundred streams.
    assert report["seconds"] < ATTACK_SECONDS / 2
    assert report["streams"] < 5_000
    assert legit.success_rate >= 0.9, legit.codes
