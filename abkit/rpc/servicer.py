"""The AssignmentService servicer: convert, call the service, convert back.

The server is ``grpc.aio`` (:mod:`abkit.rpc.server`). Each method is wrapped by
:func:`abkit.rpc.tracing.rpc`: a span, the duration metric, and the
translation of :class:`~abkit.errors.AbkitError` into gRPC status codes. ``Assign`` and
``AssignBatch`` take their request's bytes -- a plain one (unit ids without attributes,
:mod:`abkit.core.plain`) is read without building a message per unit, any other is parsed by
protobuf -- and answer with already-serialized bytes (:class:`~abkit.rpc.convert.ResponseCache`),
so the service is registered by :func:`add_to_server`, whose serializers pass bytes through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from opentelemetry.trace import Tracer

from abkit.core.plain import read_plain_batch, read_plain_unit
from abkit.infra.instruments import RpcMetrics
from abkit.rpc import convert
from abkit.rpc.config_feed import ConfigFeed
from abkit.rpc.durable import DurableWaits
from abkit.rpc.tracing import SERVICE, rpc
from abkit.services.assignment import AssignmentService, Pending, TraceRef
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext


class AssignmentServicer(pb_grpc.AssignmentServiceServicer):
    """Coroutines on the server's event loop. Each runs the service's synchronous part (checks,
    the core's answer, handing rows to the journal: microseconds, no I/O) and then awaits the
    group commit (:class:`~abkit.rpc.durable.DurableWaits`) instead of blocking a thread."""

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
        self._waits: DurableWaits | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve on ``loop`` (the server's, before it starts)."""
        self._waits = DurableWaits(loop, self._service.durable_timeout)
        self._feed.bind(loop)

    def _settle(self, pending: Pending | None) -> Awaitable[None]:
        """The wait for ``pending``, if any (awaited by the handler itself: one coroutine less)."""
        assert self._waits is not None, "bind() the servicer to the server's loop first"
        return self._waits.settle(pending)

    @rpc
    async def Assign(self, request: Any, context: Context, trace: TraceRef) -> Any:
        # Registered without a deserializer, as AssignBatch: a plain unit skips the message.
        if type(request) is bytes:
            plain = read_plain_unit(request)
            if plain is not None:
                columns, pending = self._service.start_assign_plain(
                    [plain[0]], plain[1], trace, batched=False
                )
                await self._settle(pending)
                if self.metrics is not None:
                    self.metrics.count_assignments(columns)
                return self._responses.response([answers[0] for answers in columns])
            request = convert.assign_request(request)
        unit = convert.unit_request_from_proto(request)
        assignments, pending = self._service.start_assign(
            unit.unit_id, unit.attributes, unit.experiment_keys, trace
        )
        await self._settle(pending)
        if self.metrics is not None:
            self.metrics.count_assignments((assignments,))
        return self._responses.response(assignments)

    @rpc
    async def AssignBatch(self, request: Any, context: Context, trace: TraceRef) -> Any:
        # Registered without a deserializer: a plain batch (every unit an id without attributes,
        # the same keys) is read from its bytes and answered without a message per unit.
        if type(request) is bytes:
            plain = read_plain_batch(request)
            if plain is not None:
                columns, pending = self._service.start_assign_plain(*plain, trace)
                await self._settle(pending)
                if self.metrics is not None:
                    self.metrics.count_assignments(columns)
                return self._responses.columns_response(columns)
            request = convert.assign_batch_request(request)
        units = convert.unit_requests_from_proto(request.requests)
        results, pending = self._service.start_assign_batch(units, trace)
        await self._settle(pending)
        if self.metrics is not None:
            self.metrics.count_assignments(results)
        return self._responses.batch_response(results)

    @rpc
    async def LogExposures(self, request: Any, context: Context, trace: TraceRef) -> Any:
        accepted, pending = self._service.start_log_exposures(
            convert.exposure_inputs_from_proto(request)
        )
        await self._settle(pending)
        return pb.LogExposuresResponse(accepted=accepted)

    async def WatchConfig(self, request: Any, context: Context) -> AsyncIterator[bytes]:
        async for message in self._feed.stream(request, context):
            yield message

    @rpc
    async def Track(self, request: Any, context: Context, trace: TraceRef) -> Any:
        events, pending = self._service.start_track_batch(
            [convert.track_input_from_proto(request)], trace, single=True
        )
        await self._settle(pending)
        return pb.TrackResponse(event_id=events[0].event_id)

    @rpc
    async def TrackBatch(self, request: Any, context: Context, trace: TraceRef) -> Any:
        items = [
            convert.track_input_from_proto(e, f"events[{i}].") for i, e in enumerate(request.events)
        ]
        events, pending = self._service.start_track_batch(items, trace)
        await self._settle(pending)
        return pb.TrackBatchResponse(event_ids=convert.event_ids(events))


def add_to_server(servicer: AssignmentServicer, server: grpc.aio.Server) -> None:
    """Register the service as the generated ``add_..._to_server`` would, with
    :func:`~abkit.rpc.convert.wire` as every response serializer."""
    methods: dict[str, tuple[Callable[..., Any], Any]] = {
        "Assign": (servicer.Assign, None),  # bytes: Assign reads them
        "AssignBatch": (servicer.AssignBatch, None),  # bytes: AssignBatch reads them
        "Track": (servicer.Track, pb.TrackRequest),
        "TrackBatch": (servicer.TrackBatch, pb.TrackBatchRequest),
        "LogExposures": (servicer.LogExposures, pb.LogExposuresRequest),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=None if request is None else request.FromString,
            response_serializer=convert.wire,
        )
        for name, (method, request) in methods.items()
    }
    handlers["WatchConfig"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchConfig,
        request_deserializer=pb.WatchConfigRequest.FromString,
        response_serializer=convert.wire,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
