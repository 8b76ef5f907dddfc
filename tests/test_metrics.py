"""``--metrics-listen``: Prometheus text at /metrics after a known sequence of
calls, from one server in-process and from ``--workers 2`` as real
processes (one endpoint for both workers, served by a process of its own)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.domain.keys import generate_key
from server.metrics import render_registry, serve_metrics, workers_registry
from tests.api.rpc import rpc_error
from tests.api.test_ext_authz import call as envoy_call
from tests.api.test_ext_authz import envoy_check
from tests.harness import running_server
from tests.replicas.processes import AdminKeys, free_port, new_key, server_process
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import authorize_pb2_grpc
from voiso.apikeys.v1 import key_admin_pb2 as pb

USERS = {"method": "GET", "path": "/api/v4/users"}
SCRAPE_TIMEOUT_S = 15.0
FRESH_CONNECTIONS = 16
MAX_ROUNDS = 10

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(port: int, settled: Callable[[Samples], bool]) -> Samples:
    """Scrapes until ``settled`` holds (workers write their numbers for the
    metrics process twice a second)."""
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while True:
        samples = await scrape(port)
        if settled(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.2)


def checks(samples: Samples) -> Mapping[str, float]:
    return {
        reason: value(samples, "apikeys_checks_total", reason=reason)
        for reason in (
            "REASON_ALLOWED",
            "REASON_KEY_MALFORMED",
            "REASON_KEY_NOT_FOUND",
            "REASON_SCOPE_MISSING",
            "REASON_ROUTE_NOT_FOUND",
        )
    }


def handled(samples: Samples, service: str, method: str, code: str = "OK") -> float:
    return value(
        samples,
        "grpc_server_handled_total",
        grpc_service=service,
        grpc_method=method,
        grpc_code=code,
    )


async def test_metrics_count_checks_calls_and_the_cache(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", args=["--metrics-listen", "127.0.0.1:0"]) as h:
        created = await h.admin.CreateKey(
            pb.CreateKeyRequest(name="counted", scopes=["users.read"]), metadata=h.auth()
        )
        key = created.secret
        for _ in range(3):
            assert (await h.authorize.Check(az.CheckRequest(key=key, **USERS))).allowed
        await h.authorize.Check(az.CheckRequest(key=generate_key(), **USERS))
        await h.authorize.Check(az.CheckRequest(key="malformed", **USERS))
        await h.authorize.Check(az.CheckRequest(key="", **USERS))
        await h.authorize.CheckBatch(
            az.CheckBatchRequest(
                checks=[
                    az.CheckRequest(key=key, **USERS),
                    az.CheckRequest(key=key, method="GET", path="/api/v4/nothing"),
                ]
            )
        )
        await envoy_call(
            h, envoy_check("GET", "/api/v4/campaigns", {"authorization": f"Bearer {key}"})
        )
        samples = await scrape(h.server.metrics_port)

    assert checks(samples) == {
        "REASON_ALLOWED": 4,
        "REASON_KEY_MALFORMED": 2,
        "REASON_KEY_NOT_FOUND": 1,
        "REASON_SCOPE_MISSING": 1,
        "REASON_ROUTE_NOT_FOUND": 1,
    }
    authorize = "voiso.apikeys.v1.Authorize"
    assert handled(samples, authorize, "Check") == 6
    assert handled(samples, authorize, "CheckBatch") == 1
    assert handled(samples, "voiso.apikeys.v1.KeyAdmin", "CreateKey") == 1
    assert handled(samples, "envoy.service.auth.v3.Authorization", "Check") == 1
    timed = {"grpc_service": authorize, "grpc_method": "Check"}
    assert value(samples, "grpc_server_handling_seconds_count", **timed) == 6
    assert value(samples, "grpc_server_handling_seconds_bucket", le="+Inf", **timed) == 6
    assert 0 < value(samples, "grpc_server_handling_seconds_sum", **timed) < 6
    # The key's first check missed (the create dropped its hash), the unknown
    # key missed once; the key's five later checks (the route-not-found one
    # too: the cache is asked first) were answered from memory.
    assert value(samples, "apikeys_cache_misses_total") == 2
    assert value(samples, "apikeys_cache_hits_total") == 5
    assert value(samples, "apikeys_cache_entries") == 1
    assert value(samples, "apikeys_watchers") == 0
    assert 0 <= value(samples, "apikeys_change_feed_lag_seconds") < 5


async def test_a_refused_call_is_counted_with_its_code(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", args=["--metrics-listen", "127.0.0.1:0"]) as h:
        refused = await rpc_error(h.authorize.Check(az.CheckRequest(key="k", method="GET")))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        samples = await scrape(h.server.metrics_port)
    assert handled(samples, "voiso.apikeys.v1.Authorize", "Check", "INVALID_ARGUMENT") == 1
    assert handled(samples, "voiso.apikeys.v1.Authorize", "Check") == 0


async def fresh_connection_check(target: str, key: str) -> az.CheckResponse:
    """``key`` checked over a TCP connection of its own (which the kernel
    hands to either worker)."""
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        stub = authorize_pb2_grpc.AuthorizeStub(channel)
        response: az.CheckResponse = await stub.Check(az.CheckRequest(key=key, **USERS), timeout=15)
        return response


async def test_workers_are_served_as_one_endpoint_by_a_process_of_its_own(
    tmp_path: Path,
) -> None:
    admin_keys = AdminKeys.make(tmp_path / "identity")
    metrics_port = free_port()
    async with server_process(
        tmp_path / "var",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}",
        admin_keys=admin_keys,
        args=["--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
    ) as server:
        _, key = await new_key(server, admin_keys)
        for _ in range(3):
            assert not (await server.check(generate_key())).allowed
        # Each worker drops the key from its cache once when the change feed
        # brings the create back round; checks go on until both hold it.
        allowed = 0
        for _ in range(MAX_ROUNDS):
            for _ in range(FRESH_CONNECTIONS):
                assert (await fresh_connection_check(server.target, key)).allowed
            allowed += FRESH_CONNECTIONS
            samples = await scrape_until(
                metrics_port, lambda s, sent=allowed: checks(s)["REASON_ALLOWED"] == sent
            )
            if value(samples, "apikeys_cache_entries") == 2:
                break
        supervisor_threads = _threads(server.process.pid)
    got = checks(samples)
    assert got["REASON_ALLOWED"] == allowed
    assert got["REASON_KEY_NOT_FOUND"] == 3
    assert handled(samples, "voiso.apikeys.v1.Authorize", "Check") == allowed + 3
    assert handled(samples, "voiso.apikeys.v1.KeyAdmin", "CreateKey") == 1
    # Both workers answered the key and hold it.
    assert value(samples, "apikeys_cache_entries") == 2
    # Every lookup of a well-formed key, in either worker, is one or the other.
    lookups = value(samples, "apikeys_cache_hits_total") + value(
        samples, "apikeys_cache_misses_total"
    )
    assert lookups == allowed + 3
    assert value(samples, "apikeys_watchers") == 0
    # The supervisor, which forks, runs no thread besides its main one.
    assert supervisor_threads == 1


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


async def test_the_watchers_gauge_counts_open_streams(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", args=["--metrics-listen", "127.0.0.1:0"]) as h:
        streams = [h.authorize.WatchChanges(az.WatchChangesRequest()) for _ in range(3)]
        for stream in streams:
            assert (await stream.read()).WhichOneof("event") == "reset"
        opened = await scrape(h.server.metrics_port)
        streams[0].cancel()
        closed = await scrape_until(
            h.server.metrics_port, lambda samples: value(samples, "apikeys_watchers") == 2
        )
        for stream in streams[1:]:
            stream.cancel()

    assert value(opened, "apikeys_watchers") == 3
    assert value(closed, "apikeys_watchers") == 2


@asynccontextmanager
async def metrics_served(render: Callable[[], bytes]) -> AsyncIterator[str]:
    """``serve_metrics(render)`` on a free port; yields its /metrics URL."""
    server = await serve_metrics(render, host="127.0.0.1", port=0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/metrics"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_workers_file_caught_half_made_is_answered_500_and_read_again_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's metrics file caught between being created and sized (here
    one that stays empty) cannot be read: the scrape is answered 500 rather
    than the connection dropped, and once the file is whole it is read."""
    (tmp_path / "counter_4242.db").write_bytes(b"")
    render = render_registry(workers_registry(tmp_path))
    async with metrics_served(render) as url, httpx.AsyncClient() as client:
        broken = await client.get(url, timeout=5)
        (tmp_path / "counter_4242.db").unlink()
        whole = await client.get(url, timeout=5)
    assert broken.status_code == 500
    assert broken.content == b""
    assert [r.message for r in caplog.records] == ["cannot render the metrics"]
    assert whole.status_code == 200


async def test_a_render_that_fails_once_is_tried_again() -> None:
    calls = 0

    def render() -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise FileNotFoundError("a worker's file removed after it was listed")
        return b"apikeys_up 1\n"

    async with metrics_served(render) as url, httpx.AsyncClient() as client:
        response = await client.get(url, timeout=5)
    assert (response.status_code, response.content, calls) == (200, b"apikeys_up 1\n", 2)
