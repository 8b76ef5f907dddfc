"""Admin authentication: an interceptor that rejects before any servicer runs.

``KeyAdmin`` calls must carry ``authorization: Bearer <JWT>``. The verified
actor is handed to the servicer through a context variable set around the
handler. Calls to other services pass straight through untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeAlias, cast

import grpc

from server.admin_tokens import AdminTokenVerifier
from server.api.errors import abort
from server.domain.errors import Unauthenticated
from server.domain.permissions import Actor

log = logging.getLogger(__name__)

KEY_ADMIN_PREFIX = "/voiso.apikeys.v1.KeyAdmin/"

_actor: ContextVar[Actor] = ContextVar("actor")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Behavior: TypeAlias = "Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]"


def current_actor() -> Actor:
    """The actor of the admin call being served."""
    return _actor.get()


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the admin token of every ``KeyAdmin`` call."""

    def __init__(self, verifier: AdminTokenVerifier) -> None:
        self._verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(KEY_ADMIN_PREFIX):
            return handler
        try:
            actor = self._verifier.verify(_bearer(handler_call_details.invocation_metadata))
        except Unauthenticated as exc:
            return _rejecting(handler, exc)
        return _with_actor(handler, actor, handler_call_details.method)


def _bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization metadata is not 'Bearer <token>'")
            return token.strip()
    raise Unauthenticated("no authorization metadata")


def _with_actor(handler: Handler, actor: Actor, method: str) -> Handler:
    # KeyAdmin has only unary answers, served by async behaviours.
    inner = cast(_Behavior, handler.stream_unary or handler.unary_unary)
    rpc = method.removeprefix(KEY_ADMIN_PREFIX)

    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        token = _actor.set(actor)
        started = time.perf_counter()
        try:
            return await inner(request, context)
        finally:
            _actor.reset(token)
            # Who did what and how it ended; never request fields, which
            # may hold a secret pasted into the wrong place.
            code = context.code()
            log.info(
                "admin call",
                extra={
                    "rpc": rpc,
                    "actor": actor.actor_id,
                    "contact_center": actor.contact_center_id,
                    "code": code.name if isinstance(code, grpc.StatusCode) else "OK",
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )

    return _like(handler, behavior)


def _rejecting(handler: Handler, exc: Unauthenticated) -> Handler:
    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, exc)

    return _like(handler, behavior)


def _like(handler: Handler, behavior: _Behavior) -> Handler:
    """A handler of the same kind as ``handler`` (the server reads unary
    requests from a stream, see ``server.api.parsing``) serving ``behavior``."""
    make = (
        grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
