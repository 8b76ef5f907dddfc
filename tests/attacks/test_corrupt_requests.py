"""A request that does not parse is INVALID_ARGUMENT with a fixed message, on
every method of every service, and a flood of them barely touches the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from server.api.errors import REQUEST_UNPARSEABLE
from tests.harness import Harness
from voiso.apikeys.v1 import authorize_pb2, key_admin_pb2

SERVICES = (
    key_admin_pb2.DESCRIPTOR.services_by_name["KeyAdmin"],
    authorize_pb2.DESCRIPTOR.services_by_name["Authorize"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
METHODS = [method for service in SERVICES for method in service.methods]
CORRUPT_WIRE = b"\xff\xff\xff\xff"
FLOOD = 10_000


def _bad_utf8(method: object) -> bytes | None:
    """A request whose first string field holds invalid UTF-8, if it has one."""
    for field in method.input_type.fields:  # type: ignore[attr-defined]
        if field.type == FieldDescriptor.TYPE_STRING:
            tag = (field.number << 3) | 2
            return bytes([tag, 2]) + b"\xff\xfe"
    return None


def _cases() -> Iterator[object]:
    for method in METHODS:
        name = f"{method.containing_service.name}.{method.name}"
        yield pytest.param(method, CORRUPT_WIRE, id=f"{name}-wire")
        text = _bad_utf8(method)
        if text is not None:
            yield pytest.param(method, text, id=f"{name}-utf8")


async def _call(harness: Harness, method: object, body: bytes) -> grpc.aio.AioRpcError:
    path = f"/{method.containing_service.full_name}/{method.name}"  # type: ignore[attr-defined]
    metadata = harness.auth() if "KeyAdmin" in path else ()
    channel = harness.channel
    try:
        if method.client_streaming:  # type: ignore[attr-defined]
            call = channel.stream_stream(path)(iter([body]), metadata=metadata, timeout=5)
            async for _ in call:
                pass
        elif method.server_streaming:  # type: ignore[attr-defined]
            async for _ in channel.unary_stream(path)(body, metadata=metadata, timeout=5):
                pass
        else:
            await channel.unary_unary(path)(body, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"{path} answered a corrupt request")


@pytest.mark.parametrize(("method", "body"), list(_cases()))
async def test_a_corrupt_request_is_invalid_argument_with_a_fixed_message(
    harness: Harness, method: object, body: bytes
) -> None:
    error = await _call(harness, method, body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == REQUEST_UNPARSEABLE.details


async def test_ten_thousand_corrupt_requests_write_a_few_log_lines(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    check = harness.channel.unary_unary("/voiso.apikeys.v1.Authorize/Check")
    caplog.set_level(logging.DEBUG)
    caplog.clear()

    async def refused() -> grpc.StatusCode:
        try:
            await check(CORRUPT_WIRE, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    codes: list[grpc.StatusCode] = []
    # Batches within the connection's stream bound.
    for _ in range(FLOOD // 50):
        codes += await asyncio.gather(*(refused() for _ in range(50)))
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * FLOOD
    written = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(written) <= 3, [r.getMessage() for r in written]
    assert not any(r.exc_info for r in caplog.records)
