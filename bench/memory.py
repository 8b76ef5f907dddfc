"""The key cache's memory: ``--keys`` distinct keys looked up through ``CachedKeyStore``.

Each lookup misses and goes to a store that builds a fresh ``KeyRecord`` the
way the SQL store decodes a row (new strings and bytes per record, nothing
shared but the scope names), so what stays resident afterwards is what the
cache keeps per entry. Prints JSON: resident set size before and after, and
the bytes tracemalloc traces to the cache.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import secrets
import sys
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from server.cache import CachedKeyStore
from server.domain.keys import KeyHasher, generate_key
from server.domain.records import KeyRecord
from server.settings import Settings

DEFAULTS = Settings()

SCOPES = ("campaigns.manage", "reporting.cdrs.read", "users.read")


class RecordStore:
    """Answers lookups with a freshly built record, as a database read does."""

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        now = datetime.now(UTC)
        return KeyRecord(
            id="key_" + secrets.token_hex(12),
            contact_center_id="cc-" + secrets.token_hex(4),
            name="integration " + secrets.token_hex(4),
            description="nightly export of call records",
            scopes=tuple(sorted(SCOPES)),
            lookup_hash=bytes(lookup_hash),
            last4=secrets.token_hex(2),
            secret_ciphertext=secrets.token_bytes(12 + 53 + 16),
            encryption_key_id="k1",
            create_time=now,
            update_time=now,
            last_used_time=None,
            created_by="user-" + secrets.token_hex(4),
        )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize()


def _cache(store: object) -> CachedKeyStore:
    # TTLs far beyond the measurement, so no entry expires while it is counted.
    return CachedKeyStore(
        store,  # type: ignore[arg-type]
        ttl=DEFAULTS.cache_ttl * 100,
        size=DEFAULTS.cache_size,
        negative_ttl=DEFAULTS.negative_cache_ttl * 100,
        negative_size=DEFAULTS.negative_cache_size,
    )


async def _fill(cache: CachedKeyStore, hashes: list[bytes]) -> None:
    for lookup_hash in hashes:
        await cache.find_by_lookup_hash(lookup_hash)


async def measure(keys: int) -> dict[str, Any]:
    """RSS without tracing first (tracemalloc's own bookkeeping is resident
    too), then the traced bytes of a second cache, found and unknown keys."""
    hasher = KeyHasher(secrets.token_bytes(32))
    batches = [[hasher.lookup_hash(generate_key()) for _ in range(keys)] for _ in range(3)]
    resident = _cache(RecordStore())
    gc.collect()
    rss_before = _rss_bytes()
    await _fill(resident, batches[0])
    gc.collect()
    rss_after = _rss_bytes()

    traced: list[float] = []
    for store, hashes in ((RecordStore(), batches[1]), (_Unknown(), batches[2])):
        cache = _cache(store)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await _fill(cache, hashes)
        gc.collect()
        traced.append((tracemalloc.get_traced_memory()[0] - before) / keys)
        tracemalloc.stop()
    per_entry, negative_per_entry = traced
    return {
        "entries": len(resident),
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
        "rss_per_entry_bytes": (rss_after - rss_before) / len(resident),
        "traced_per_entry_bytes": per_entry,
        "negative_traced_per_entry_bytes": negative_per_entry,
        "bound_mib": (
            per_entry * DEFAULTS.cache_size + negative_per_entry * DEFAULTS.negative_cache_size
        )
        / 2**20,
    }


class _Unknown:
    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.keys))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
