"""A server interceptor that opens one OpenTelemetry SERVER span per RPC.

The caller's W3C trace context (``traceparent``/``tracestate`` metadata) becomes the span's parent,
so the exposure and event rows written under this span carry the caller's trace id. Span names and
attributes follow the OpenTelemetry semantic conventions for RPC (``rpc.system=grpc``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from abkit.metrics import RpcMetrics


class TracingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Opens the SERVER span and records ``rpc.server.duration`` of every RPC."""

    def __init__(self, tracer: trace.Tracer, metrics: RpcMetrics | None = None) -> None:
        self._tracer = tracer
        self._metrics = metrics

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method  # "/abkit.v1.AssignmentService/Assign"
        service, _, name = method.lstrip("/").rpartition("/")
        inner = handler.unary_unary
        tracer = self._tracer
        duration = self._metrics.duration if self._metrics is not None else None

        def traced(request: Any, context: grpc.ServicerContext) -> Any:
            carrier = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            parent = propagate.extract(carrier)
            with tracer.start_as_current_span(
                f"{service}/{name}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                started = time.perf_counter()
                try:
                    return inner(request, context)
                finally:
                    code = context.code()
                    if duration is not None:
                        status = 0 if code is None else code.value[0]
                        duration.record(
                            (time.perf_counter() - started) * 1000.0,
                            {"rpc.method": name, "rpc.grpc.status_code": status},
                        )
                    if code is not None and code != grpc.StatusCode.OK:
                        span.set_attribute("rpc.grpc.status_code", code.value[0])
                        if code in _SERVER_FAULTS:
                            span.set_status(Status(StatusCode.ERROR, str(context.details())))
                    else:
                        span.set_attribute("rpc.grpc.status_code", 0)

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


# Per the semantic conventions, only these codes mark a *server* span as failed; a client's
# INVALID_ARGUMENT is the client's error, not the server's.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
