"""The one place that knows gRPC status codes.

Domain errors become a status code, a safe message and rich details
(``google.rpc.ErrorInfo`` always; ``BadRequest`` or ``QuotaFailure`` where
they apply). Anything unexpected is logged here and answered as a plain
``INTERNAL``: no driver or library text ever reaches a caller.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    KeyLimitExceeded,
    KeyNotFound,
    KeyUnreadable,
    PermissionDenied,
    StoreUnavailable,
    Unauthenticated,
    WatcherCutOff,
    WatchersExhausted,
    WatchingOff,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "apikeys.voiso.com"
# Ten violations cover any honest request (a create has three fields) and
# keep the status near 1 KB however many entries are bad; a status is sent in
# the trailers, and grpc clients refuse trailers past a few KB by default.
MAX_FIELD_VIOLATIONS = 10

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
ServicerT = TypeVar("ServicerT")


Described: TypeAlias = tuple[int, str, str, list[object]]
_INTERNAL: Final[Described] = (code_pb2.INTERNAL, "internal error", "INTERNAL", [])


def to_status(exc: BaseException) -> grpc.Status:
    """The status a caller receives for ``exc``. An error this module has no
    answer for (a bug, or a domain error nobody mapped) is logged here, with
    its traceback, and answered as a plain ``INTERNAL``."""
    described = _describe(exc)
    if described is None:
        log.error("unexpected error", exc_info=exc)
        described = _INTERNAL
    return _status(*described)


def _status(code: int, message: str, reason: str, details: list[object]) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    packed = [_pack(info), *(_pack(detail) for detail in details)]
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))


async def abort(
    context: grpc.aio.ServicerContext[RequestT, ResponseT], exc: BaseException
) -> NoReturn:
    """Ends the call with the status for ``exc`` (see ``to_status``)."""
    status = to_status(exc)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


def translates_errors(
    method: Callable[
        [ServicerT, RequestT, grpc.aio.ServicerContext[RequestT, ResponseT]], Awaitable[ResponseT]
    ],
) -> Callable[
    [ServicerT, RequestT, grpc.aio.ServicerContext[RequestT, ResponseT]], Awaitable[ResponseT]
]:
    """Decorates a servicer method so that its errors are answered here."""

    @functools.wraps(method)
    async def wrapper(
        self: ServicerT, request: RequestT, context: grpc.aio.ServicerContext[RequestT, ResponseT]
    ) -> ResponseT:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc)

    return wrapper


def _describe(exc: BaseException) -> Described | None:
    if isinstance(exc, InvalidArgument):
        return _invalid_argument(exc.violations)
    if isinstance(exc, Unauthenticated):
        return code_pb2.UNAUTHENTICATED, f"admin token rejected: {exc}", "TOKEN_INVALID", []
    if isinstance(exc, PermissionDenied):
        return (
            code_pb2.PERMISSION_DENIED,
            f"missing permission {exc.permission}",
            "PERMISSION_MISSING",
            [],
        )
    if isinstance(exc, KeyNotFound):
        return code_pb2.NOT_FOUND, "key not found", "KEY_NOT_FOUND", []
    if isinstance(exc, KeyLimitExceeded):
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"contact_center:{exc.contact_center_id}",
                    description=f"at most {exc.limit} API keys per contact center",
                )
            ]
        )
        return (
            code_pb2.RESOURCE_EXHAUSTED,
            f"the contact center already has {exc.limit} keys; delete one first",
            "KEY_LIMIT_REACHED",
            [quota],
        )
    if isinstance(exc, KeyUnreadable):
        return (
            code_pb2.FAILED_PRECONDITION,
            f"the key's secret cannot be decrypted: key-encryption key "
            f"{exc.encryption_key_id!r} is not configured or the ciphertext is damaged",
            "SECRET_UNREADABLE",
            [],
        )
    if isinstance(exc, WatchersExhausted):
        return (
            code_pb2.RESOURCE_EXHAUSTED,
            f"this server takes at most {exc.limit} watchers; retry with backoff or elsewhere",
            "WATCHERS_EXHAUSTED",
            [],
        )
    if isinstance(exc, WatcherCutOff):
        return (
            code_pb2.RESOURCE_EXHAUSTED,
            "this watcher fell too far behind; drop what it cached and watch again",
            "WATCHER_CUT_OFF",
            [],
        )
    if isinstance(exc, WatchingOff):
        return code_pb2.UNIMPLEMENTED, "WatchChanges is turned off", "WATCHING_OFF", []
    if isinstance(exc, StoreUnavailable):
        return code_pb2.UNAVAILABLE, "key store unavailable; retry", "STORE_UNAVAILABLE", []
    return None


def _invalid_argument(violations: Sequence[FieldViolation]) -> Described:
    """The answer for bad input: violations name fields (the domain never
    puts a caller's value in one) and only the first
    ``MAX_FIELD_VIOLATIONS`` are listed, so the status stays a few KB
    whatever the request's size; the rest are counted in one last entry."""
    listed = [(v.field, v.description) for v in violations[:MAX_FIELD_VIOLATIONS]]
    omitted = len(violations) - len(listed)
    if omitted:
        listed.append(("", f"and {omitted} more invalid fields"))
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in listed
        ]
    )
    message = "invalid request: " + "; ".join(
        f"{field} {description}" if field else description for field, description in listed
    )
    return code_pb2.INVALID_ARGUMENT, message, "INVALID_ARGUMENT", [bad_request]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


# Answers given before a request reaches any servicer: fixed texts, so that
# nothing the caller sent and no library text comes back.
REQUEST_UNPARSEABLE: Final = _status(
    code_pb2.INVALID_ARGUMENT,
    "the request is not a valid message of the method's request type",
    "REQUEST_UNPARSEABLE",
    [],
)
OVERLOADED: Final = _status(
    code_pb2.RESOURCE_EXHAUSTED,
    "too many calls in progress; retry with backoff",
    "OVERLOADED",
    [],
)
REQUEST_TOO_SLOW: Final = _status(
    code_pb2.DEADLINE_EXCEEDED,
    "the request message did not arrive in time",
    "REQUEST_TIMEOUT",
    [],
)
