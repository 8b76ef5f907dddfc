"""What ``bench.caching`` reads off a server process is what it reports:
its CPU time from /proc and the percentiles of its revocation trials."""

from __future__ import annotations

import subprocess
import sys

from bench.caching import cpu_seconds, percentile

# Reading the process clock is a system call, so the loop reads it seldom.
SPIN = (
    "end = time.process_time() + 0.5\n"
    "while time.process_time() < end:\n"
    "    for _ in range(100_000): pass\n"
)
SLEEP = "time.sleep(0.5)\n"


def _child_cpu(work: str) -> tuple[float, float]:
    """User and system seconds a child spends doing ``work``, read around
    it: the child waits to be told to start and reports when it is done."""
    code = (
        "import time\nprint('ready', flush=True)\ninput()\n"
        f"{work}print('done', flush=True)\ninput()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        before = cpu_seconds(child.pid)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"
        after = cpu_seconds(child.pid)
    finally:
        child.communicate("\n", timeout=30)
    return after[0] - before[0], after[1] - before[1]


def test_a_process_spinning_half_a_second_shows_half_a_second_of_user_time() -> None:
    user, system = _child_cpu(SPIN)

    # /proc counts in ticks of 10 ms.
    assert 0.45 <= user + system <= 0.65
    assert user > system


def test_a_sleeping_process_shows_next_to_no_cpu_time() -> None:
    user, system = _child_cpu(SLEEP)

    assert user + system < 0.05


def test_percentiles_are_nearest_rank_so_the_p99_of_100_trials_is_the_99th() -> None:
    trials = [float(n) for n in range(100, 0, -1)]

    assert percentile(trials, 0.5) == 50.0
    assert percentile(trials, 0.99) == 99.0
    assert percentile(trials, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
