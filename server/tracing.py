"""Traces: with the standard ``OTEL_*`` variables set, every RPC is a span.

``tracer_provider_from_environment`` reads OpenTelemetry's own variables
(``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``, ...). Without them it returns
``None`` and no interceptor is installed: tracing off costs nothing.

``TracingInterceptor`` opens a server span around each call, continuing the
W3C trace context (``traceparent``) the caller sent in its metadata, and
records the status code the call ended with.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import grpc
from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Behavior: TypeAlias = "Callable[[Any, Context], Awaitable[Any]]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

TRACER_NAME = "apikeys-server"


def tracer_provider_from_environment(
    environ: Mapping[str, str] | None = None,
) -> TracerProvider | None:
    """A provider exporting as the ``OTEL_*`` variables say, or ``None``
    when they ask for no traces (unset, ``OTEL_TRACES_EXPORTER=none`` or
    ``OTEL_SDK_DISABLED=true``)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter_name == "none" or (not exporter_name and not endpoint):
        return None
    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Makes every call a server span of ``provider``'s tracer."""

    def __init__(self, provider: TracerProvider) -> None:
        self._tracer = provider.get_tracer(TRACER_NAME)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        kind = _handler_kind(handler)
        traced = self._traced(getattr(handler, kind), method, metadata)
        replaced: Handler = handler._replace(**{kind: traced})  # type: ignore[attr-defined]
        return replaced

    def _traced(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        name = method.removeprefix("/")
        service, _, rpc = name.rpartition("/")
        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        tracer = self._tracer

        async def traced(request: Any, context: Context) -> Any:
            with tracer.start_as_current_span(
                name,
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc},
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                code = grpc.StatusCode.OK
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    code = _status_code(context.code())
                    raise
                except BaseException:
                    code = grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if code is not grpc.StatusCode.OK:
                        span.set_status(Status(StatusCode.ERROR, code.name))

        return traced


def _handler_kind(handler: Handler) -> str:
    if handler.request_streaming:
        return "stream_stream" if handler.response_streaming else "stream_unary"
    return "unary_stream" if handler.response_streaming else "unary_unary"


def _status_code(code: object) -> grpc.StatusCode:
    if isinstance(code, grpc.StatusCode):
        return code
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN
