"""The history checker: it finds a stale answer when there is one, and a
short history of writers and checkers on four replicas has none."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.replicas.history import BOUND_S, Answer, KeyHistory, Write, judge, run_replicas
from tests.replicas.processes import AdminKeys


def _deleted_at(returned: float) -> KeyHistory:
    return KeyHistory(
        writes=[
            Write(allowed=True, sent=0.0, returned=0.1),
            Write(allowed=False, sent=returned - 0.1, returned=returned),
        ]
    )


def test_an_allow_after_a_delete_returned_is_stale_by_the_time_since() -> None:
    history = _deleted_at(5.0)
    history.answers = [
        Answer(allowed=True, sent=4.95, received=5.2),  # overlapped the delete
        Answer(allowed=False, sent=5.1, received=5.2),
        Answer(allowed=True, sent=7.0, received=7.1),  # 2 s after it returned
    ]

    verdict = judge([history])

    assert verdict.judged == 3 and verdict.stale == (2.0,)
    assert verdict.beyond(1.5) == 1


def test_a_deny_before_the_delete_was_sent_can_never_have_been_right() -> None:
    history = _deleted_at(5.0)
    history.answers = [Answer(allowed=False, sent=1.0, received=1.1)]

    assert judge([history]).stale == (float("inf"),)


def test_answers_after_a_failed_write_are_not_judged() -> None:
    history = _deleted_at(5.0)
    history.writes.append(Write(allowed=True, sent=6.0, returned=6.1, ok=False))
    history.answers = [Answer(allowed=True, sent=9.0, received=9.1)]

    verdict = judge([history])

    assert verdict.judged == 0 and verdict.stale == ()


@pytest.mark.postgres
async def test_a_short_history_on_four_replicas_has_no_stale_answer(
    tmp_path: Path, postgres_url: str
) -> None:
    admin_keys = AdminKeys.make(tmp_path / "identity")

    verdict = await run_replicas(tmp_path, postgres_url, admin_keys, replicas=4, seconds=8)

    print(f"\nhistory: {verdict.summary()}")
    assert verdict.writes > 100 and verdict.judged > 2000, verdict.summary()
    assert verdict.beyond(BOUND_S) == 0, verdict.summary()
