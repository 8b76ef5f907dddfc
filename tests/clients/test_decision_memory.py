"""The store and drop rules of the caching clients, message by message, on a stepped clock.

``DecisionMemory`` is what both caching clients keep; these tests feed it the
messages a ``WatchChanges`` stream sends and the answers ``Check`` returns,
so that each rule of contract section 10 is seen to hold on its own. The
clients against the real server are ``test_caching.py``.
"""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from clients import Decision, Reason
from clients._caching import CacheKey, DecisionMemory
from voiso.apikeys.v1 import authorize_pb2

STALENESS = 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reset(mark: int) -> authorize_pb2.WatchChangesResponse:
    return authorize_pb2.WatchChangesResponse(mark=mark, reset=authorize_pb2.Reset())


def heartbeat(mark: int) -> authorize_pb2.WatchChangesResponse:
    return authorize_pb2.WatchChangesResponse(mark=mark, heartbeat=authorize_pb2.Heartbeat())


def changes(mark: int, *items: tuple[str, int]) -> authorize_pb2.WatchChangesResponse:
    return authorize_pb2.WatchChangesResponse(
        mark=mark,
        changes=authorize_pb2.Changes(
            changes=[
                authorize_pb2.Change(
                    key_id=key_id, kind=authorize_pb2.CHANGE_KIND_UPDATED, sequence=sequence
                )
                for key_id, sequence in items
            ]
        ),
    )


def answer(
    key_id: str = "key-1",
    *,
    revision: int = 10,
    ttl: float = 5.0,
    reason: Reason = Reason.ALLOWED,
) -> tuple[authorize_pb2.CheckResponse, Decision]:
    response = authorize_pb2.CheckResponse(
        allowed=reason is Reason.ALLOWED,
        reason=authorize_pb2.Reason.Value(reason.value),
        key_id=key_id,
        revision=revision,
    )
    response.cache_ttl.CopyFrom(Duration(seconds=int(ttl), nanos=int(ttl % 1 * 1e9)))
    return response, Decision.from_proto(response)


def where(key: str, path: str = "/api/v4/users") -> CacheKey:
    return (key, "GET", path, "")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def memory(clock: Clock) -> DecisionMemory:
    opened = DecisionMemory(staleness=STALENESS, max_entries=100, clock=clock)
    opened.apply(reset(10))
    return opened


def keep(
    memory: DecisionMemory,
    cache_key: CacheKey,
    key_id: str = "key-1",
    *,
    epoch: int | None = None,
    revision: int = 10,
    ttl: float = 5.0,
    reason: Reason = Reason.ALLOWED,
) -> bool:
    response, decision = answer(key_id, revision=revision, ttl=ttl, reason=reason)
    return memory.store(
        cache_key,
        response,
        decision,
        epoch=memory.epoch if epoch is None else epoch,
        sent_at=100.0,
    )


def test_nothing_is_kept_before_the_first_reset(clock: Clock) -> None:
    memory = DecisionMemory(clock=clock)
    assert not memory.fresh
    assert not keep(memory, where("a"), revision=10)
    assert memory.entries == {}


def test_an_answer_at_or_above_the_reset_mark_is_kept_until_its_ttl(memory: DecisionMemory) -> None:
    assert keep(memory, where("a"), revision=10, ttl=2.5)
    expires, decision, key_id = memory.entries[where("a")]
    assert (expires, decision.reason, key_id) == (102.5, Reason.ALLOWED, "key-1")


def test_an_answer_from_before_the_reset_mark_is_not_kept(memory: DecisionMemory) -> None:
    assert not keep(memory, where("a"), revision=9)


@pytest.mark.parametrize("reason", [Reason.KEY_NOT_FOUND, Reason.UNSPECIFIED])
def test_unknown_keys_and_unspecified_answers_are_never_kept(
    memory: DecisionMemory, reason: Reason
) -> None:
    assert not keep(memory, where("a"), reason=reason)


def test_denials_of_a_found_key_are_kept(memory: DecisionMemory) -> None:
    for index, reason in enumerate(
        [Reason.SCOPE_MISSING, Reason.KEY_DISABLED, Reason.IP_NOT_ALLOWED]
    ):
        assert keep(memory, where("a", f"/p{index}"), reason=reason)


def test_an_answer_without_a_ttl_or_a_key_id_is_not_kept(memory: DecisionMemory) -> None:
    assert not keep(memory, where("a"), ttl=0)
    assert not keep(memory, where("a"), key_id="", reason=Reason.ROUTE_NOT_FOUND)


def test_an_answer_sent_before_a_reset_or_a_break_is_not_kept(memory: DecisionMemory) -> None:
    before = memory.epoch
    memory.apply(reset(10))
    assert not keep(memory, where("a"), epoch=before)
    during = memory.epoch
    memory.broken()
    memory.apply(reset(10))
    assert not keep(memory, where("a"), epoch=during)
    assert keep(memory, where("a"))


def test_a_change_drops_older_answers_for_its_key_only(memory: DecisionMemory) -> None:
    assert keep(memory, where("a"), "key-1", revision=10)
    assert keep(memory, where("a", "/other"), "key-1", revision=12)
    assert keep(memory, where("b"), "key-2", revision=10)
    memory.apply(changes(12, ("key-1", 11)))
    assert set(memory.entries) == {where("a", "/other"), where("b")}


def test_after_a_change_an_answer_older_than_it_is_not_kept(memory: DecisionMemory) -> None:
    memory.apply(changes(12, ("key-1", 12)))
    assert not keep(memory, where("a"), revision=11)
    assert keep(memory, where("a"), revision=12)


def test_a_reset_drops_everything_and_raises_the_floor(memory: DecisionMemory) -> None:
    assert keep(memory, where("a"), revision=10)
    memory.apply(reset(20))
    assert memory.entries == {}
    assert not keep(memory, where("a"), revision=19)
    assert keep(memory, where("a"), revision=20)


def test_an_event_newer_than_the_client_is_taken_as_a_reset(memory: DecisionMemory) -> None:
    assert keep(memory, where("a"))
    memory.apply(authorize_pb2.WatchChangesResponse(mark=30))
    assert memory.entries == {}
    assert not keep(memory, where("a"), revision=29)


def test_the_stream_is_fresh_for_staleness_after_each_message(
    memory: DecisionMemory, clock: Clock
) -> None:
    clock.now += STALENESS - 0.01
    assert memory.fresh
    memory.apply(heartbeat(10))
    clock.now += STALENESS - 0.01
    assert memory.fresh
    clock.now += 0.02
    assert not memory.fresh
    assert not keep(memory, where("a"))


def test_a_broken_stream_is_not_fresh_at_once(memory: DecisionMemory) -> None:
    memory.broken()
    assert not memory.fresh
    assert not keep(memory, where("a"))


def test_at_most_max_entries_answers_are_kept_oldest_evicted_first(clock: Clock) -> None:
    memory = DecisionMemory(max_entries=3, clock=clock)
    memory.apply(reset(10))
    for index in range(5):
        assert keep(memory, where(f"k{index}"), f"key-{index}")
    assert list(memory.entries) == [where("k2"), where("k3"), where("k4")]
    # Evicted answers leave nothing behind for their key either.
    memory.apply(changes(11, ("key-0", 11), ("key-1", 11)))
    assert list(memory.entries) == [where("k2"), where("k3"), where("k4")]


def test_the_change_record_is_bounded_by_raising_the_floor(clock: Clock) -> None:
    memory = DecisionMemory(max_entries=3, clock=clock)
    memory.apply(reset(10))
    memory.apply(changes(14, ("key-1", 11), ("key-2", 14), ("key-3", 12)))
    # A fourth key id would overflow the record: it is forgotten, and so is
    # everything at or below its newest sequence.
    memory.apply(changes(15, ("key-4", 13)))
    assert not keep(memory, where("a"), "key-9", revision=13)
    assert keep(memory, where("a"), "key-9", revision=14)


@pytest.mark.parametrize(
    ("staleness", "max_entries"), [(0, 10), (-1, 10), (1, 0)], ids=["zero", "negative", "entries"]
)
def test_settings_that_cannot_work_are_refused(staleness: float, max_entries: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        DecisionMemory(staleness=staleness, max_entries=max_entries)
