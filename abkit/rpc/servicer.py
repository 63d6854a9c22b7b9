"""The AssignmentService servicer: convert, call the service, convert back.

Each method is wrapped by :func:`abkit.rpc.tracing.rpc`: a span, the duration metric, and the
translation of :class:`~abkit.errors.AbkitError` into gRPC status codes.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from opentelemetry.trace import Tracer

from abkit.metrics import RpcMetrics
from abkit.rpc import convert
from abkit.rpc.tracing import rpc
from abkit.services import AssignmentService, TraceRef
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class AssignmentServicer(pb_grpc.AssignmentServiceServicer):
    def __init__(
        self,
        service: AssignmentService,
        tracer: Tracer,
        metrics: RpcMetrics | None = None,
        *,
        records_spans: bool = True,
    ) -> None:
        self._service = service
        self.tracer = tracer
        self.metrics = metrics
        self.records_spans = records_spans
        self._responses = convert.ResponseCache()

    @rpc
    def Assign(self, request: Any, context: grpc.ServicerContext, trace: TraceRef) -> Any:
        unit = convert.unit_request_from_proto(request)
        assignments = self._service.assign(
            unit.unit_id, unit.attributes, unit.experiment_keys, trace
        )
        if self.metrics is not None:
            self.metrics.count_assignments((assignments,))
        return self._responses.response(assignments)

    @rpc
    def AssignBatch(self, request: Any, context: grpc.ServicerContext, trace: TraceRef) -> Any:
        units = [
            convert.unit_request_from_proto(r, f"requests[{i}].")
            for i, r in enumerate(request.requests)
        ]
        results = self._service.assign_batch(units, trace)
        if self.metrics is not None:
            self.metrics.count_assignments(results)
        response = self._responses.response
        return pb.AssignBatchResponse(responses=[response(r) for r in results])

    @rpc
    def Track(self, request: Any, context: grpc.ServicerContext, trace: TraceRef) -> Any:
        event = self._service.track(convert.track_input_from_proto(request), trace)
        return pb.TrackResponse(event_id=event.event_id)

    @rpc
    def TrackBatch(self, request: Any, context: grpc.ServicerContext, trace: TraceRef) -> Any:
        items = [
            convert.track_input_from_proto(e, f"events[{i}].") for i, e in enumerate(request.events)
        ]
        events = self._service.track_batch(items, trace)
        return pb.TrackBatchResponse(event_ids=convert.event_ids(events))
