"""Reading and pruning the change feed, per backend.

PostgreSQL: every entry carries its transaction's id (``xid``), and a
reader's position is a pair of snapshots (``pg_current_snapshot()``): the one
its last read ended at (``since``) and, while a read spans several pages,
the one that read started at (``upto``). The entries due are those whose
transaction is visible in ``upto`` and was not in ``since``. Visibility is
the database's own record of which transactions had committed when a
snapshot was taken, so a transaction that commits late, however late, is
simply due at the first read after it commits; no time window decides
anything. Snapshots also carry the horizon (``xmin``): every transaction
below it has finished, which bounds the rows a read has to look at and
bounds what pruning may delete.

SQLite has a single writer: a transaction takes its ``seq`` and commits
before the next one can take one, so entries become visible in ``seq``
order and the highest ``seq`` read is a position.

``docs/REVOCATION.md`` gives the whole argument.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, func, literal_column, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.domain.records import ChangeKind, ChangePage, FeedPosition, KeyChange
from server.store._schema import key_changes, key_changes_pruned
from server.store._times import from_micros

log = logging.getLogger(__name__)

# The writing transaction's id; xid8 never wraps around (its upper half is
# the epoch), and it fits a signed 64-bit integer for billions of years.
POSTGRES_XID: ColumnElement[int] = literal_column(
    "pg_current_xact_id()::text::bigint", type_=BigInteger
)

# What the reader needs besides the rows, read in the rows' snapshot: the
# snapshot itself, which database this is (a failover to a standby keeps the
# system identifier but starts a new timeline; another cluster has another
# identifier; a re-created database another oid), and how far pruning went.
_POSTGRES_FEED_STATE = text(
    "SELECT pg_current_snapshot()::text AS snapshot,"
    " concat_ws(':', (SELECT system_identifier FROM pg_control_system()),"
    " substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8),"
    " (SELECT oid FROM pg_database WHERE datname = current_database())) AS database,"
    " (SELECT pruned_below_xid FROM key_changes_pruned WHERE id = 1) AS pruned_below_xid"
)

_POSTGRES_DUE = text(
    "SELECT seq, xid, key_id, lookup_hash, kind, time FROM key_changes"
    " WHERE xid >= :since_xmin AND seq > :after"
    " AND NOT pg_visible_in_snapshot(xid::text::xid8, CAST(CAST(:since AS text) AS pg_snapshot))"
    " AND pg_visible_in_snapshot(xid::text::xid8, CAST(CAST(:upto AS text) AS pg_snapshot))"
    " ORDER BY seq LIMIT :limit"
)

_POSTGRES_CLOCK = "(extract(epoch from clock_timestamp()) * 1000000)::bigint"
_SQLITE_CLOCK = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)"


def database_clock(conn: AsyncConnection) -> ColumnElement[int]:
    """The database server's clock in microseconds since the epoch, so that
    entries are stamped and aged by one clock whatever the replicas' clocks
    say (on SQLite, the one machine's clock)."""
    clock = _POSTGRES_CLOCK if conn.dialect.name == "postgresql" else _SQLITE_CLOCK
    return literal_column(clock, type_=BigInteger)


async def postgres_changes(
    conn: AsyncConnection, position: FeedPosition | None, limit: int
) -> ChangePage:
    """One page of the feed on PostgreSQL, read on ``conn`` in one
    REPEATABLE READ transaction (so the snapshot read is the rows')."""
    state = (await conn.execute(_POSTGRES_FEED_STATE)).mappings().one()
    current, database = state["snapshot"], state["database"]
    fresh = _position(database=database, since=current)
    if position is None:
        return ChangePage(changes=(), position=fresh, mark=_mark(current))
    held = json.loads(position)
    upto = held.get("upto", current)
    if held["database"] != database or _went_back(current, upto):
        log.warning(
            "the database is not the one the change feed was read from (failover or replacement)",
            extra={"was": held["database"], "now": database},
        )
        return ChangePage(changes=(), position=fresh, mark=_mark(current), reset=True)
    since = held["since"]
    result = await conn.execute(
        _POSTGRES_DUE,
        {
            "since_xmin": _xmin(since),
            "since": since,
            "upto": upto,
            "after": held.get("after", 0),
            "limit": limit,
        },
    )
    changes = tuple(_change(row) for row in result.mappings())
    more = len(changes) == limit
    return ChangePage(
        changes=changes,
        position=(
            _position(database=database, since=since, upto=upto, after=changes[-1].seq)
            if more
            else _position(database=database, since=upto)
        ),
        mark=_mark(since if more else upto),
        more=more,
        missed=int(state["pruned_below_xid"]) > _xmin(since),
    )


async def sqlite_changes(
    conn: AsyncConnection, position: FeedPosition | None, limit: int
) -> ChangePage:
    """One page of the feed on SQLite, read on ``conn`` in one transaction."""
    ends = (
        await conn.execute(
            select(
                select(func.max(key_changes.c.seq)).scalar_subquery(),
                select(key_changes_pruned.c.pruned_through).scalar_subquery(),
            )
        )
    ).one()
    latest, pruned = int(ends[0] or 0), int(ends[1] or 0)
    # A seq is never handed out twice in one file (AUTOINCREMENT).
    end = max(latest, pruned)
    if position is None:
        return ChangePage(changes=(), position=_position(seq=end), mark=end)
    seq = int(json.loads(position)["seq"])
    if end < seq:
        log.warning("the database file is not the one the change feed was read from")
        return ChangePage(changes=(), position=_position(seq=end), mark=end, reset=True)
    result = await conn.execute(
        select(
            key_changes.c.seq,
            key_changes.c.xid,
            key_changes.c.key_id,
            key_changes.c.lookup_hash,
            key_changes.c.kind,
            key_changes.c.time,
        )
        .where(key_changes.c.seq > seq)
        .order_by(key_changes.c.seq)
        .limit(limit)
    )
    changes = tuple(_change(row) for row in result.mappings())
    # One writer at a time: a seq is taken inside its transaction, so every
    # entry still to commit takes a seq above the last one visible now.
    read_to = changes[-1].seq if changes else max(seq, pruned)
    return ChangePage(
        changes=changes,
        position=_position(seq=read_to),
        mark=read_to,
        more=len(changes) == limit,
        missed=pruned > seq,
    )


async def postgres_prune(conn: AsyncConnection, retention_micros: int) -> int:
    """Prune on PostgreSQL: entries of transactions below a bound that is
    under the horizon (so every transaction below it has finished and no
    entry below it can still appear), under every entry younger than the
    retention, and just above the old entries."""
    bounds = (
        await conn.execute(
            text(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,"
                f" {_POSTGRES_CLOCK} - :retention AS cutoff"
            ),
            {"retention": retention_micros},
        )
    ).one()
    horizon, cutoff = int(bounds.horizon), int(bounds.cutoff)
    old = key_changes.c.time < cutoff
    oldest_young = await conn.scalar(select(func.min(key_changes.c.xid)).where(~old))
    newest_old = await conn.scalar(select(func.max(key_changes.c.xid)).where(old))
    below = 0 if newest_old is None else min(horizon, int(newest_old) + 1)
    if oldest_young is not None:
        below = min(below, int(oldest_young))
    # Entries written before transaction ids were recorded go by age alone.
    doomed = (key_changes.c.xid < below) | (key_changes.c.xid.is_(None) & old)
    through = await conn.scalar(select(func.max(key_changes.c.seq)).where(doomed))
    if through is None:
        return 0
    await raise_pruned_marks(conn, through=int(through), below_xid=below)
    result = await conn.execute(key_changes.delete().where(doomed))
    return int(result.rowcount)


async def raise_pruned_marks(conn: AsyncConnection, *, through: int, below_xid: int) -> None:
    """Raise the pruned marks (never lower them) before deleting entries."""
    larger = func.max if conn.dialect.name == "sqlite" else func.greatest
    marks = key_changes_pruned.c
    await conn.execute(
        update(key_changes_pruned)
        .where(marks.id == 1)
        .values(
            pruned_through=larger(marks.pruned_through, through),
            pruned_below_xid=larger(marks.pruned_below_xid, below_xid),
        )
    )


def _position(**fields: Any) -> FeedPosition:
    return FeedPosition(json.dumps(fields, separators=(",", ":")))


def _xmin(snapshot: str) -> int:
    return int(snapshot.split(":", 1)[0])


def _xmax(snapshot: str) -> int:
    return int(snapshot.split(":", 2)[1])


def _mark(snapshot: str) -> int:
    """Every transaction below a snapshot's horizon has finished, so every
    entry of one that committed is visible in it; any other transaction has
    an id at or above the horizon."""
    return _xmin(snapshot) - 1


def _went_back(current: str, previous: str) -> bool:
    """Transaction ids only grow on one database's history; lower ones mean
    another history (a standby promoted without the last commits, or a
    restore)."""
    return _xmin(current) < _xmin(previous) or _xmax(current) < _xmax(previous)


def _change(row: Any) -> KeyChange:
    return KeyChange(
        seq=row["seq"],
        sequence=row["seq"] if row["xid"] is None else row["xid"],
        key_id=row["key_id"],
        lookup_hash=bytes(row["lookup_hash"]),
        kind=ChangeKind(row["kind"]),
        time=from_micros(row["time"]),
    )
