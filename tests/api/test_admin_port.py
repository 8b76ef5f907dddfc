"""``--admin-listen`` moves ``KeyAdmin`` and reflection to a port of their
own; ``--reflection false`` turns reflection off."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.settings import SettingsError
from tests.api.rpc import rpc_error
from tests.harness import Harness, running_server
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb
from voiso.apikeys.v1 import key_admin_pb2_grpc

KEY_ADMIN = "voiso.apikeys.v1.KeyAdmin"
AUTHORIZE = "voiso.apikeys.v1.Authorize"


async def reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names: set[str] = set()
    async for response in stub.ServerReflectionInfo(iter([request])):
        if response.HasField("error_response"):
            raise AssertionError(response.error_response.error_message)
        names.update(service.name for service in response.list_services_response.service)
    return names


def admin_channel(harness: Harness) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{harness.server.admin_port}")


async def test_with_an_admin_port_key_admin_is_unimplemented_on_the_main_port(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path / "var", args=["--admin-listen", "127.0.0.1:0"]) as h:
        assert h.server.admin_port not in (0, h.port)
        error = await rpc_error(h.admin.ListScopes(pb.ListScopesRequest(), metadata=h.auth()))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        # Authorize stays on the main port.
        answer = await h.authorize.Check(
            az.CheckRequest(key="vsk_x", method="GET", path="/api/v4/users"), timeout=5
        )
        assert answer.reason == az.REASON_KEY_MALFORMED

        async with admin_channel(h) as channel:
            admin = key_admin_pb2_grpc.KeyAdminStub(channel)
            scopes = await admin.ListScopes(pb.ListScopesRequest(), metadata=h.auth())
            assert scopes.scopes
            # The admin port still demands an admin token.
            error = await rpc_error(admin.ListScopes(pb.ListScopesRequest()))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reflection_is_served_on_the_admin_port_only(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", args=["--admin-listen", "127.0.0.1:0"]) as h:
        error = await rpc_error(reflected_services(h.channel))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        async with admin_channel(h) as channel:
            names = await reflected_services(channel)
        assert KEY_ADMIN in names
        assert AUTHORIZE not in names


async def test_both_ports_report_health(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "var", args=["--admin-listen", "127.0.0.1:0"]) as h,
        admin_channel(h) as channel,
    ):
        for port_channel in (h.channel, channel):
            stub = health_pb2_grpc.HealthStub(port_channel)
            for service in ("", KEY_ADMIN, AUTHORIZE):
                response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_false_turns_reflection_off(tmp_path: Path) -> None:
    async with running_server(tmp_path / "one", args=["--reflection", "false"]) as h:
        error = await rpc_error(reflected_services(h.channel))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    args = ["--admin-listen", "127.0.0.1:0", "--reflection", "false"]
    async with running_server(tmp_path / "two", args=args) as h, admin_channel(h) as channel:
        error = await rpc_error(reflected_services(channel))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_an_admin_port_in_use_stops_the_start_naming_the_option(tmp_path: Path) -> None:
    async with running_server(tmp_path / "first") as first:
        taken = f"127.0.0.1:{first.port}"
        with pytest.raises(SettingsError, match="--admin-listen"):
            async with running_server(tmp_path / "second", args=["--admin-listen", taken]):
                pass
