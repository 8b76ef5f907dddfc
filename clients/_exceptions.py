"""The exceptions the API-key clients raise, one per gRPC outcome a caller acts on.

Every ``grpc.RpcError`` is translated by :func:`from_rpc_error` into::

    ApiKeysError                  any failed call; .code and .details
    ├── TransportError            the call did not get an answer
    │   ├── Unavailable           server unreachable or the store is down; safe to retry
    │   └── DeadlineExceeded      no answer within the deadline
    ├── InvalidArgument           the request is malformed; .field_violations
    ├── Unauthenticated           no or bad admin token
    ├── PermissionDenied          the admin lacks the permission
    ├── NotFound                  no such key in the admin's contact center
    ├── ResourceExhausted         a limit is reached; .quota_violations
    └── InternalError             the server failed (or answered with an unexpected code)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "ApiKeysError",
    "DeadlineExceeded",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "status_code",
]


class ApiKeysError(Exception):
    """A call to the API-key service failed.

    ``code`` is the gRPC status code, ``details`` the server's message.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class TransportError(ApiKeysError):
    """The call got no answer from the service."""


class Unavailable(TransportError):
    """The service cannot be reached or cannot answer now; retrying later may succeed."""


class DeadlineExceeded(TransportError):
    """The call's deadline passed before an answer arrived."""


class InvalidArgument(ApiKeysError):
    """The request is malformed.

    ``field_violations`` lists ``(field, description)`` for each bad field, from
    the ``google.rpc.BadRequest`` detail.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(code, details)
        self.field_violations = field_violations or []


class Unauthenticated(ApiKeysError):
    """The admin token is missing, malformed, expired or not signed by a trusted key."""


class PermissionDenied(ApiKeysError):
    """The admin is authenticated but lacks the permission for the call."""


class NotFound(ApiKeysError):
    """No such key in the admin's contact center."""


class ResourceExhausted(ApiKeysError):
    """A limit is reached, such as the number of keys per contact center.

    ``quota_violations`` lists ``(subject, description)`` from the
    ``google.rpc.QuotaFailure`` detail.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        quota_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(code, details)
        self.quota_violations = quota_violations or []


class InternalError(ApiKeysError):
    """The service failed, or answered with a code this client does not expect."""


_SIMPLE: dict[grpc.StatusCode, Callable[[grpc.StatusCode, str], ApiKeysError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    # A cancelled call, e.g. by closing the channel, got no answer either.
    grpc.StatusCode.CANCELLED: TransportError,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
}


def status_code(exc: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call; ``UNKNOWN`` when the error carries none."""
    code = getattr(exc, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def from_rpc_error(exc: grpc.RpcError) -> ApiKeysError:
    """Translates a failed gRPC call (sync or ``grpc.aio``) into an :class:`ApiKeysError`."""
    code = status_code(exc)
    details_method = getattr(exc, "details", None)
    details = (details_method() if callable(details_method) else None) or code.name
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(code, details, field_violations=_field_violations(exc))
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(code, details, quota_violations=_quota_violations(exc))
    return _SIMPLE.get(code, InternalError)(code, details)


def _field_violations(exc: grpc.RpcError) -> list[tuple[str, str]]:
    for detail in _status_details(exc):
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            return [(v.field, v.description) for v in bad_request.field_violations]
    return []


def _quota_violations(exc: grpc.RpcError) -> list[tuple[str, str]]:
    for detail in _status_details(exc):
        quota_failure = error_details_pb2.QuotaFailure()
        if detail.Unpack(quota_failure):
            return [(v.subject, v.description) for v in quota_failure.violations]
    return []


def _status_details(exc: grpc.RpcError) -> list[Any]:
    """The ``google.protobuf.Any`` details of the error's ``google.rpc.Status``."""
    try:
        # Sync errors are grpc.Call objects; grpc.aio.AioRpcError is not, but has
        # the same code(), details() and trailing_metadata() that from_call reads.
        status = rpc_status.from_call(cast(grpc.Call, exc))
    except (ValueError, DecodeError, AttributeError, TypeError):
        # A status that disagrees with the call or does not parse carries no
        # trustworthy details; the code and message still stand.
        return []
    return list(status.details) if status is not None else []
