"""With a tracer provider, every RPC is a server span that continues the
caller's W3C trace context; without one no interceptor is installed."""

from __future__ import annotations

from pathlib import Path

import grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from server.app import Wiring
from server.tracing import tracer_provider_from_environment
from tests.api.rpc import rpc_error
from tests.harness import running_server
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


def traceparent(parent_span: str = PARENT_SPAN_ID) -> tuple[tuple[str, str], ...]:
    return (("traceparent", f"00-{TRACE_ID}-{parent_span}-01"),)


async def test_every_rpc_is_a_span_continuing_the_callers_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    wiring = Wiring(tracer_provider=lambda: provider)
    async with running_server(tmp_path / "var", wiring=wiring) as h:
        created = await h.admin.CreateKey(
            pb.CreateKeyRequest(name="traced", scopes=["users.read"]),
            metadata=(*h.auth(), *traceparent("00f067aa0ba902b1")),
        )
        await h.authorize.Check(
            az.CheckRequest(key=created.secret, method="GET", path="/api/v4/users"),
            metadata=traceparent("00f067aa0ba902b2"),
        )
        refused = await rpc_error(
            h.admin.ListKeys(pb.ListKeysRequest(), metadata=traceparent("00f067aa0ba902b3"))
        )
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        await h.authorize.Check(az.CheckRequest(key="x", method="GET", path="/api/v4/users"))
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == [
        "voiso.apikeys.v1.KeyAdmin/CreateKey",
        "voiso.apikeys.v1.Authorize/Check",
        "voiso.apikeys.v1.KeyAdmin/ListKeys",
        "voiso.apikeys.v1.Authorize/Check",
    ]
    assert all(span.kind == SpanKind.SERVER for span in spans)
    continued = spans[:3]
    for span, parent in zip(continued, ("b1", "b2", "b3"), strict=True):
        assert span.context is not None and span.parent is not None
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert format(span.parent.span_id, "016x") == "00f067aa0ba902" + parent
        assert span.parent.is_remote
    assert continued[0].attributes is not None
    assert continued[0].attributes["rpc.grpc.status_code"] == 0
    assert continued[2].status.status_code == StatusCode.ERROR
    assert continued[2].attributes is not None
    assert (
        continued[2].attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    )
    # A call without a traceparent starts a trace of its own.
    assert spans[3].parent is None
    assert spans[3].context is not None
    assert format(spans[3].context.trace_id, "032x") != TRACE_ID


def test_without_otel_variables_there_is_no_tracing() -> None:
    assert tracer_provider_from_environment({}) is None
    assert tracer_provider_from_environment({"OTEL_SERVICE_NAME": "apikeys"}) is None
    assert tracer_provider_from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert (
        tracer_provider_from_environment(
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
        )
        is None
    )


def test_otel_variables_turn_tracing_on() -> None:
    for environ in (
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "apikeys"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
    ):
        provider = tracer_provider_from_environment(environ)
        assert provider is not None, environ
        provider.shutdown()
