"""The AssignmentService servicer: convert, call the service, convert back.

Each method is wrapped by :func:`abkit.rpc.tracing.rpc`: a span, the duration metric, and the
translation of :class:`~abkit.errors.AbkitError` into gRPC status codes. ``Assign`` and
``AssignBatch`` answer with already-serialized bytes (:class:`~abkit.rpc.convert.ResponseCache`),
so the service is registered by :func:`add_to_server`, whose serializers pass bytes through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.trace import Tracer

from abkit.infra.instruments import RpcMetrics
from abkit.rpc import convert
from abkit.rpc.config_feed import ConfigFeed
from abkit.rpc.tracing import SERVICE, rpc
from abkit.services.assignment import AssignmentService, TraceRef
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
        feed: ConfigFeed | None = None,
    ) -> None:
        self._service = service
        self._feed = feed or ConfigFeed(max_streams=1, heartbeat_seconds=5.0)
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
        units = convert.unit_requests_from_proto(request.requests)
        results = self._service.assign_batch(units, trace)
        if self.metrics is not None:
            self.metrics.count_assignments(results)
        return self._responses.batch_response(results)

    @rpc
    def LogExposures(self, request: Any, context: grpc.ServicerContext, trace: TraceRef) -> Any:
        accepted = self._service.log_exposures(convert.exposure_inputs_from_proto(request))
        return pb.LogExposuresResponse(accepted=accepted)

    def WatchConfig(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        return self._feed.stream(request, context)

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


def add_to_server(
    servicer: AssignmentServicer,
    server: grpc.Server,
    *,
    stream_pool: futures.ThreadPoolExecutor | None = None,
) -> None:
    """Register the service as the generated ``add_..._to_server`` would, with
    :func:`~abkit.rpc.convert.wire` as every response serializer; ``WatchConfig`` streams run
    in ``stream_pool`` when given (grpcio's per-method thread pool), not the server's."""
    methods: dict[str, tuple[Callable[..., Any], Any]] = {
        "Assign": (servicer.Assign, pb.AssignRequest),
        "AssignBatch": (servicer.AssignBatch, pb.AssignBatchRequest),
        "Track": (servicer.Track, pb.TrackRequest),
        "TrackBatch": (servicer.TrackBatch, pb.TrackBatchRequest),
        "LogExposures": (servicer.LogExposures, pb.LogExposuresRequest),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request.FromString, response_serializer=convert.wire
        )
        for name, (method, request) in methods.items()
    }

    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        return servicer.WatchConfig(request, context)

    if stream_pool is not None:
        # grpcio runs a handler with this attribute in that pool (grpc/_server.py,
        # _select_thread_pool_for_behavior; "experimental" since grpcio 1.60).
        setattr(watch, "experimental_thread_pool", stream_pool)  # noqa: B010
    handlers["WatchConfig"] = grpc.unary_stream_rpc_method_handler(
        watch,
        request_deserializer=pb.WatchConfigRequest.FromString,
        response_serializer=convert.wire,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
