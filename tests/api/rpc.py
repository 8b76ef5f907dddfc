"""Helpers for asserting on gRPC errors and their rich details."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Awaits ``call`` and returns the error it must fail with."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def error_bytes(exc: grpc.aio.AioRpcError) -> bytes:
    """Everything an error carries back to the caller: its message and every
    trailer, rich details included."""
    return b"".join(
        [
            (exc.details() or "").encode(),
            *(
                value if isinstance(value, bytes) else value.encode()
                for _, value in exc.trailing_metadata() or ()
            ),
        ]
    )


def status_details(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    raise AssertionError("no rich status details")


def bad_fields(exc: grpc.aio.AioRpcError) -> list[str]:
    """The field names of the BadRequest detail."""
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
    for detail in status_details(exc).details:
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            return [violation.field for violation in request.field_violations]
    raise AssertionError("no BadRequest detail")


def quota_subjects(exc: grpc.aio.AioRpcError) -> list[str]:
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
    for detail in status_details(exc).details:
        failure = error_details_pb2.QuotaFailure()
        if detail.Unpack(failure):
            return [violation.subject for violation in failure.violations]
    raise AssertionError("no QuotaFailure detail")
