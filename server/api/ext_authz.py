"""Envoy's ``envoy.service.auth.v3.Authorization``: the ``ext_authz`` filter of
an Envoy or Istio gateway calls the service directly.

The request's method and path (query string and all: the route table ignores
the query) come from ``attributes.request.http``, the key from its
``authorization`` header (``Bearer <key>``), the client's address from
``attributes.source.address``. Each check goes through the same
``Authorizer`` (and cache) as ``Authorize.Check``.

An allowed request goes upstream with ``x-apikey-id``,
``x-contact-center-id`` and ``x-apikey-scopes`` set (replacing whatever the
client sent under those names) and without its ``authorization`` header. A
denied one is answered by Envoy with the HTTP status of ``DENIALS`` and a
JSON body naming the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from server.api.errors import abort
from server.domain.authorize import Checks
from server.domain.decisions import Decision, Reason
from server.domain.errors import StoreUnavailable
from server.domain.memo import IdentityMemo

Context = grpc.aio.ServicerContext[Any, Any]

MEMO_LIMIT = 4096
KEY_ID_HEADER = "x-apikey-id"
CONTACT_CENTER_HEADER = "x-contact-center-id"
SCOPES_HEADER = "x-apikey-scopes"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclass(frozen=True, kw_only=True, slots=True)
class Refusal:
    """A kind of refusal: the ``status.code`` Envoy is given (a
    ``google.rpc.Code``) and the HTTP status its client gets."""

    code: int
    http_status: int


UNAUTHORIZED: Final = Refusal(code=code_pb2.UNAUTHENTICATED, http_status=401)
FORBIDDEN: Final = Refusal(code=code_pb2.PERMISSION_DENIED, http_status=403)
NOT_FOUND: Final = Refusal(code=code_pb2.NOT_FOUND, http_status=404)
UNAVAILABLE: Final = Refusal(code=code_pb2.UNAVAILABLE, http_status=503)


@dataclass(frozen=True, kw_only=True, slots=True)
class Denial:
    """How a gateway answers one denied request: its refusal and the body's
    reason and message."""

    refusal: Refusal
    reason: str
    message: str


def _denials(table: Mapping[Reason, tuple[Refusal, str]]) -> Mapping[Reason, Denial]:
    return {
        reason: Denial(refusal=refusal, reason=reason.value, message=message)
        for reason, (refusal, message) in table.items()
    }


DENIALS: Final = _denials(
    {
        Reason.KEY_MALFORMED: (UNAUTHORIZED, "missing or malformed API key; send Bearer <key>"),
        Reason.KEY_NOT_FOUND: (UNAUTHORIZED, "unknown API key"),
        Reason.KEY_DISABLED: (UNAUTHORIZED, "the API key is disabled"),
        Reason.KEY_EXPIRED: (UNAUTHORIZED, "the API key has expired"),
        Reason.IP_NOT_ALLOWED: (FORBIDDEN, "the API key may not be used from this address"),
        Reason.SCOPE_MISSING: (FORBIDDEN, "the API key's scopes do not cover this request"),
        Reason.ROUTE_NOT_FOUND: (NOT_FOUND, "no API route matches this method and path"),
    }
)
"""Every denying ``Reason`` and its answer: a new reason is one line here."""

STORE_UNAVAILABLE: Final = Denial(
    refusal=UNAVAILABLE,
    # No Reason decided the request: it could not be decided.
    reason="REASON_UNSPECIFIED",
    message="the key store is unavailable; retry",
)


class EnvoyAuthorizationServicer:
    """Answers Envoy's ``ext_authz`` checks."""

    def __init__(self, checks: Checks) -> None:
        self._check = checks.check
        # As in AuthorizeServicer: a response is derived from its decision
        # alone, so the one built for a repeated decision is sent again. It
        # is never changed after it is built.
        self._responses: IdentityMemo[pb.CheckResponse] = IdentityMemo(MEMO_LIMIT)
        self._unavailable = denied_response(STORE_UNAVAILABLE)

    async def Check(self, request: pb.CheckRequest, context: Context) -> pb.CheckResponse:
        attributes = request.attributes
        http = attributes.request.http
        try:
            decision = await self._check(
                bearer_key(http.headers.get("authorization", "")),
                http.method,
                http.path,
                client_ip=attributes.source.address.socket_address.address,
                time_left=context.time_remaining(),
            )
        except StoreUnavailable:
            return self._unavailable
        except Exception as exc:
            await abort(context, exc)
        response = self._responses.get(decision)
        if response is None:
            response = self._responses.put(gateway_response(decision), decision)
        return response


def bearer_key(authorization: str) -> str:
    """The key of an ``authorization`` header value, or ``""`` when it holds
    none (no header, another scheme): such a key is malformed."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return credentials.strip()


def gateway_response(decision: Decision) -> pb.CheckResponse:
    """What Envoy is told for ``decision``."""
    if not decision.allowed:
        return denied_response(DENIALS[decision.reason])
    headers = (
        (KEY_ID_HEADER, decision.key_id),
        (CONTACT_CENTER_HEADER, decision.contact_center_id),
        (SCOPES_HEADER, ",".join(decision.granted_scopes)),
    )
    return pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=pb.OkHttpResponse(
            headers=_overwriting(headers),
            headers_to_remove=["authorization"],
        ),
    )


def denied_response(denial: Denial) -> pb.CheckResponse:
    """The answer that makes Envoy send ``denial`` to the client."""
    refusal = denial.refusal
    body = {
        "error": {
            "status": refusal.http_status,
            "reason": denial.reason,
            "message": denial.message,
        }
    }
    headers: list[tuple[str, str]] = [("content-type", "application/json")]
    if refusal is UNAUTHORIZED:
        headers.append(("www-authenticate", "Bearer"))
    return pb.CheckResponse(
        status=status_pb2.Status(code=refusal.code, message=denial.message),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=refusal.http_status),
            headers=_overwriting(headers),
            body=json.dumps(body, separators=(",", ":")),
        ),
    )


def _overwriting(headers: Iterable[tuple[str, str]]) -> list[base_pb2.HeaderValueOption]:
    """Headers that replace any of the same name rather than join them."""
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
        )
        for name, value in headers
    ]
