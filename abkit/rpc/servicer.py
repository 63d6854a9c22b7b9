"""The AssignmentService servicer: convert, call the service, convert back, map errors."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from opentelemetry import trace

from abkit.errors import (
    AbkitError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
    ValidationError,
)
from abkit.metrics import RpcMetrics
from abkit.rpc import convert
from abkit.services import AssignmentService, TraceRef
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[AbkitError], grpc.StatusCode], ...] = (
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
)

F = TypeVar("F", bound=Callable[..., Any])


def status_code(exc: AbkitError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def _maps_errors(method: F) -> F:
    """Translate the AbkitError tree to gRPC status codes, once, at the edge."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except AbkitError as exc:
            context.abort(status_code(exc), str(exc))

    return wrapper  # type: ignore[return-value]


def current_trace() -> TraceRef:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return TraceRef()
    return TraceRef(f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")


class AssignmentServicer(pb_grpc.AssignmentServiceServicer):
    def __init__(self, service: AssignmentService, metrics: RpcMetrics | None = None) -> None:
        self._service = service
        self._metrics = metrics

    @_maps_errors
    def Assign(self, request: Any, context: grpc.ServicerContext) -> Any:
        unit = convert.unit_request_from_proto(request)
        assignments = self._service.assign(
            unit.unit_id, unit.attributes, unit.experiment_keys, current_trace()
        )
        if self._metrics is not None:
            self._metrics.count_assignments((assignments,))
        return convert.assign_response(assignments)

    @_maps_errors
    def AssignBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        units = [
            convert.unit_request_from_proto(r, f"requests[{i}].")
            for i, r in enumerate(request.requests)
        ]
        results = self._service.assign_batch(units, current_trace())
        if self._metrics is not None:
            self._metrics.count_assignments(results)
        return pb.AssignBatchResponse(responses=[convert.assign_response(r) for r in results])

    @_maps_errors
    def Track(self, request: Any, context: grpc.ServicerContext) -> Any:
        event = self._service.track(convert.track_input_from_proto(request), current_trace())
        return pb.TrackResponse(event_id=event.event_id)

    @_maps_errors
    def TrackBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        items = [
            convert.track_input_from_proto(e, f"events[{i}].") for i, e in enumerate(request.events)
        ]
        events = self._service.track_batch(items, current_trace())
        return pb.TrackBatchResponse(event_ids=convert.event_ids(events))
