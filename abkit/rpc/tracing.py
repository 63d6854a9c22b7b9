"""One wrapper per RPC: an OpenTelemetry SERVER span, the duration metric, error mapping.

The caller's W3C trace context (``traceparent``/``tracestate`` metadata) becomes the span's
parent, so the exposure and event rows written under this span carry the caller's trace id.
Span names and attributes follow the OpenTelemetry semantic conventions for RPC
(``rpc.system=grpc``). :class:`~abkit.errors.AbkitError` s become gRPC status codes here, once.

A decorator on the servicer's coroutines rather than a ``grpc.aio.ServerInterceptor``: the
interceptor machinery wraps every call in fresh handler objects, which cost about 15 % of an
Assign's throughput on this stack; this does the same work in one frame.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from abkit.errors import (
    AbkitError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
    ValidationError,
)
from abkit.infra.instruments import RpcMetrics
from abkit.services.assignment import NO_TRACE, TraceRef

SERVICE = "abkit.v1.AssignmentService"

_CODES: tuple[tuple[type[AbkitError], grpc.StatusCode], ...] = (
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
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


def status_code(exc: AbkitError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.UNKNOWN


class Instrumented(Protocol):
    tracer: trace.Tracer
    metrics: RpcMetrics | None
    records_spans: bool


S = TypeVar("S", bound=Instrumented)


Handler = Callable[[S, Any, grpc.aio.ServicerContext, TraceRef], Awaitable[Any]]


def rpc(method: Handler[S]) -> Callable[[S, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """Wrap a servicer coroutine: span under the caller's trace, duration, AbkitError -> status.

    One frame for both kinds of server: the wrapper awaits the method itself (each coroutine
    between the loop and the method is resumed on every wait for a group commit)."""
    name = method.__name__
    span_name = f"{SERVICE}/{name}"
    attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name}

    @functools.wraps(method)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        parent = _caller(context.invocation_metadata())
        status = grpc.StatusCode.OK
        span: trace.Span | None = None
        recording = False
        if self.records_spans:
            # Not made current: the ids travel explicitly (TraceRef), which spares a context
            # attach/detach; attributes only when the span records (validating them costs).
            span = self.tracer.start_span(span_name, context=parent, kind=SpanKind.SERVER)
            recording = span.is_recording()
            if recording:
                span.set_attributes(attributes)
            ids = span.get_span_context()
            valid = ids.is_valid
            ref = TraceRef(f"{ids.trace_id:032x}", f"{ids.span_id:016x}") if valid else NO_TRACE
        else:
            ref = _unrecorded_ids(parent)
        try:
            return await method(self, request, context, ref)
        except AbkitError as exc:
            status = status_code(exc)
            if span is not None and recording and status in _SERVER_FAULTS:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
            await context.abort(status, str(exc))
        except Exception:
            status = grpc.StatusCode.UNKNOWN  # a bug: gRPC answers UNKNOWN
            if span is not None and recording:
                span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            if span is not None:
                if recording:
                    span.set_attribute("rpc.grpc.status_code", status.value[0])
                span.end()
            if self.metrics is not None:
                self.metrics.duration.record(
                    (time.perf_counter() - started) * 1000.0, _labels(name, status.value[0])
                )

    return wrapper


def _caller(metadata: Any) -> Any:
    """The caller's trace context from W3C ``traceparent``/``tracestate`` metadata, or None."""
    for key, _ in metadata or ():
        if key == "traceparent":
            return propagate.extract({k: v for k, v in metadata if isinstance(v, str)})
    return None


def _unrecorded_ids(parent: Any) -> TraceRef:
    """The ids of an RPC whose spans are never recorded, as the SDK would make them, without
    building the span: the caller's trace id (or a new one) and a new random 64-bit span id --
    what an unsampled SDK span carries."""
    caller = trace.get_current_span(parent).get_span_context() if parent is not None else None
    trace_id = caller.trace_id if caller is not None and caller.is_valid else _ids.getrandbits(128)
    return TraceRef(f"{trace_id:032x}", f"{_ids.getrandbits(64) or 1:016x}")


_ids = random.Random()


@functools.cache
def _labels(method: str, code: int) -> dict[str, str | int]:
    return {"rpc.method": method, "rpc.grpc.status_code": code}
