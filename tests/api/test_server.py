"""The server starts on port 0, reports health, lists its services through
reflection and stops gracefully."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.harness import Harness


async def test_health_reports_serving_for_the_server_and_each_service(harness: Harness) -> None:
    stub = health_pb2_grpc.HealthStub(harness.channel)
    for service in ("", "voiso.apikeys.v1.KeyAdmin", "voiso.apikeys.v1.Authorize"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_both_services(harness: Harness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(harness.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names: set[str] = set()
    async for response in stub.ServerReflectionInfo(iter([request])):
        names.update(service.name for service in response.list_services_response.service)
    assert {"voiso.apikeys.v1.KeyAdmin", "voiso.apikeys.v1.Authorize"} <= names


async def test_graceful_stop_ends_serving(harness: Harness) -> None:
    port = harness.server.port
    await harness.server.stop(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        else:
            raise AssertionError("a stopped server answered")
