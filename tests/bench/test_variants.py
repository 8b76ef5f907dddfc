"""The benchmark's server variants are what they claim to be, so its
verdicts compare the servers they name."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bench.serve import BASELINE_RESPONSE, StatementCounter, variant
from server.app import Wiring
from tests.harness import running_server
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb

NOT_A_KEY = az.CheckRequest(key="not-a-key", method="GET", path="/api/v4/campaigns")


async def test_the_real_server_refuses_what_the_baseline_allows(tmp_path: Path) -> None:
    async with running_server(tmp_path / "real") as real:
        refused = await real.authorize.Check(NOT_A_KEY)
    async with running_server(tmp_path / "noop", wiring=variant(Wiring(), noop=True)) as noop:
        constant = await noop.authorize.Check(NOT_A_KEY)
    assert refused.reason == az.REASON_KEY_MALFORMED
    assert constant == BASELINE_RESPONSE


async def test_the_baseline_message_is_the_real_answer_same_size(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path / "var") as h:
        created = await h.admin.CreateKey(
            pb.CreateKeyRequest(name="bench", scopes=["campaigns.read"]),
            metadata=h.auth(contact_center=BASELINE_RESPONSE.contact_center_id),
        )
        # The creation, the one change, moves the revision answers carry.
        await h.server.sync_changes()
        answer = await h.authorize.Check(
            az.CheckRequest(key=created.secret, method="GET", path="/api/v4/campaigns")
        )
    assert answer.allowed
    assert answer.ByteSize() == BASELINE_RESPONSE.ByteSize()


async def test_without_interceptors_admin_calls_are_not_authenticated(tmp_path: Path) -> None:
    async with running_server(tmp_path / "real") as real:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await real.admin.ListScopes(pb.ListScopesRequest())
    wiring = variant(Wiring(), interceptors=False)
    async with running_server(tmp_path / "bare", wiring=wiring) as bare:
        with pytest.raises(grpc.aio.AioRpcError) as unguarded:
            await bare.admin.ListScopes(pb.ListScopesRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert unguarded.value.code() != grpc.StatusCode.UNAUTHENTICATED


async def test_the_statement_counter_counts_the_servers_own_store(tmp_path: Path) -> None:
    counter = StatementCounter()
    async with running_server(tmp_path / "var", wiring=counter.wiring(Wiring())) as h:
        before = counter.count
        await h.admin.CreateKey(
            pb.CreateKeyRequest(name="counted", scopes=["campaigns.read"]), metadata=h.auth()
        )
        assert counter.count > before
