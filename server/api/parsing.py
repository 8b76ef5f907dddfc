"""How every service is put on the server: admitted calls, requests that parse.

grpc.aio calls a method's request deserializer inside its own call handling:
when it raises (bad protobuf bytes, invalid UTF-8 in a string field), grpc
answers ``UNKNOWN`` with the library's text and logs a traceback, for every
such request and before any of the service's code runs. So every service is
registered here, from its descriptor, with deserializers that never raise:
bytes that do not parse become ``UNPARSEABLE``, which is answered with a fixed
``INVALID_ARGUMENT``. The log gets one line per ``LOG_INTERVAL`` however many
such requests arrive.

Every method is served as one that reads its requests from a stream, so that
the service's code runs when the call opens rather than once the request has
arrived: the call is admitted (``CallAdmission``) or refused at once, and its
request must arrive in time. A unary method reads its one request and hands it
to the servicer's method as grpc would; a streaming servicer gets the stream.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from server.api.admission import CallAdmission
from server.api.errors import OVERLOADED, REQUEST_TOO_SLOW, REQUEST_UNPARSEABLE
from server.metrics import CallTimer

log = logging.getLogger(__name__)

LOG_INTERVAL = 60.0
UNPARSEABLE: Final = object()
"""What a deserializer returns for bytes that are not a message of its type."""

Behavior = Callable[..., Any]
Context = grpc.aio.ServicerContext[Any, Any]


class LogBudget:
    """Lets one log line through per ``interval`` seconds and counts the rest."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._held_back = 0

    def spend(self) -> int | None:
        """The number of lines held back since the last one let through, if
        this one may be written now; ``None`` if it must be held back."""
        now = self._clock()
        if now < self._next:
            self._held_back += 1
            return None
        self._next = now + self._interval
        held_back, self._held_back = self._held_back, 0
        return held_back


class ServiceRegistry:
    """Puts services on a server with admission and parsing of their own."""

    def __init__(
        self,
        admission: CallAdmission,
        budget: LogBudget | None = None,
        *,
        timer: CallTimer | None = None,
    ) -> None:
        """``timer``, when given, records every call of every method."""
        self._admission = admission
        self._budget = budget or LogBudget(LOG_INTERVAL)
        self._timer = timer

    def add_service(self, server: grpc.aio.Server, service: Any, servicer: Any) -> None:
        """Serves every method of ``service`` (a protobuf ``ServiceDescriptor``;
        the health and reflection packages' stubs type theirs differently) from
        ``servicer`` on ``server``."""
        handlers = {
            method.name: self._handler(method, getattr(servicer, method.name))
            for method in service.methods
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )
        server.add_registered_method_handlers(service.full_name, handlers)

    def _handler(
        self, method: MethodDescriptor, behavior: Behavior
    ) -> grpc.RpcMethodHandler[Any, Any]:
        parse = self._deserializer(method)
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.server_streaming:
            answer = self._streaming_answer(behavior, method.client_streaming)
        else:
            answer = self._unary_answer(behavior, method.client_streaming)
        if self._timer is not None:
            answer = self._timer.timed(method.containing_service.full_name, method.name, answer)
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.server_streaming
            else grpc.stream_unary_rpc_method_handler
        )
        return make(answer, request_deserializer=parse, response_serializer=serialize)

    def _unary_answer(self, behavior: Behavior, streamed_requests: bool) -> Behavior:
        admission = self._admission

        async def serve(requests: Any, context: Context) -> Any:
            connection = context.peer()
            if not admission.admit(connection):
                await _refuse(context, OVERLOADED)
            try:
                request = await _first_request(admission, context)
                if streamed_requests:
                    request = _parsed(request, context)
                return await behavior(request, context)
            finally:
                admission.release(connection)

        return serve

    def _streaming_answer(self, behavior: Behavior, streamed_requests: bool) -> Behavior:
        admission = self._admission
        generates = inspect.isasyncgenfunction(behavior)

        async def serve(requests: Any, context: Context) -> None:
            # A long-lived answer holds its place only until its first request
            # has arrived: watchers are bounded per connection, not here.
            connection = context.peer()
            if not admission.admit(connection):
                await _refuse(context, OVERLOADED)
            try:
                first = await _first_request(admission, context)
            finally:
                admission.release(connection)
            request = _parsed(first, context) if streamed_requests else first
            if not generates:
                await behavior(request, context)
                return
            async for response in behavior(request, context):
                await context.write(response)

        return serve

    def _deserializer(self, method: MethodDescriptor) -> Callable[[bytes], Any]:
        from_bytes = message_factory.GetMessageClass(method.input_type).FromString
        name = f"/{method.containing_service.full_name}/{method.name}"

        def parse(data: bytes) -> Any:
            try:
                return from_bytes(data)
            except DecodeError:
                held_back = self._budget.spend()
                if held_back is not None:
                    log.warning(
                        "refused a request that does not parse",
                        extra={"method": name, "held_back": held_back},
                    )
                return UNPARSEABLE

        return parse


async def _refuse(context: Context, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _first_request(admission: CallAdmission, context: Context) -> Any:
    """The call's first request message, parsed, within the request timeout."""
    task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
    admission.expect_request(task)
    try:
        request = await context.read()
    except asyncio.CancelledError:
        if admission.request_arrived(task):
            raise
        await _refuse(context, REQUEST_TOO_SLOW)
    admission.request_arrived(task)
    if request is UNPARSEABLE or request is grpc.aio.EOF:
        await _refuse(context, REQUEST_UNPARSEABLE)
    return request


async def _parsed(first: Any, context: Context) -> AsyncIterator[Any]:
    yield first
    while (request := await context.read()) is not grpc.aio.EOF:
        if request is UNPARSEABLE:
            await _refuse(context, REQUEST_UNPARSEABLE)
        yield request
