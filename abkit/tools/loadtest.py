"""``abkit loadtest``: an asyncio gRPC load generator, and the empty-handler baseline server.

The generator keeps ``concurrency`` calls in flight on one grpc.aio channel for a duration (or a
number of requests), optionally paced to a target rate, unary (``Assign``) or batched
(``AssignBatch``), with a share of ``Track`` calls, and reports throughput and latency
percentiles (p50/p90/p99/p99.9), printing a progress line as it goes.

The baseline server implements the same service and message types with handlers that do
nothing but return an empty (well-formed) answer: the ceiling of this Python/gRPC stack on this
machine. Measuring abkit and the baseline with the same generator, in the same run, gives a ratio
that survives the noise of a shared machine.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import grpc.aio

from abkit.rpc import loops
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc


@dataclass(frozen=True, slots=True)
class LoadResult:
    target: str
    mode: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    units_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    error_codes: dict[str, int]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def line(self) -> str:
        return (
            f"{self.target} [{self.mode}, {self.concurrency} in flight]: {self.rps:,.0f} req/s"
            + (f" ({self.units_per_second:,.0f} units/s)" if self.mode == "batch" else "")
            + f", p50 {self.p50_ms:.2f} ms, p90 {self.p90_ms:.2f} ms, p99 {self.p99_ms:.2f} ms,"
            f" p99.9 {self.p999_ms:.2f} ms, errors {self.errors}"
        )


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _request_factory(
    mode: str, batch_size: int, experiment_keys: list[str], track_share: float, seed: int
) -> Callable[[int], tuple[str, Any, int]]:
    rng = random.Random(seed)
    attrs = {"platform": pb.AttributeValue(string_value="web")}

    def make(i: int) -> tuple[str, Any, int]:
        if track_share and rng.random() < track_share:
            request = pb.TrackRequest(
                unit_id=f"load-{i}", metric="conversion", event_id=f"lt-{seed}-{i}"
            )
            return "Track", request, 0
        if mode == "batch":
            requests = [
                pb.AssignRequest(
                    unit_id=f"load-{i}-{k}", attributes=attrs, experiment_keys=experiment_keys
                )
                for k in range(batch_size)
            ]
            return "AssignBatch", pb.AssignBatchRequest(requests=requests), batch_size
        request = pb.AssignRequest(
            unit_id=f"load-{i}", attributes=attrs, experiment_keys=experiment_keys
        )
        return "Assign", request, 1

    return make


async def _run(
    target: str,
    *,
    concurrency: int,
    duration: float | None,
    requests: int | None,
    rate: float | None,
    mode: str,
    batch_size: int,
    experiment_keys: list[str],
    track_share: float,
    progress: Callable[[str], None] | None,
    seed: int,
) -> LoadResult:
    make = _request_factory(mode, batch_size, experiment_keys, track_share, seed)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    units = 0
    issued = 0
    started = time.perf_counter()
    deadline = started + duration if duration is not None else math.inf
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await channel.channel_ready()
        stub = pb_grpc.AssignmentServiceStub(channel)
        started = time.perf_counter()
        deadline = started + duration if duration is not None else math.inf

        def next_index() -> int | None:
            nonlocal issued
            if requests is not None and issued >= requests:
                return None
            now = time.perf_counter()
            if now >= deadline:
                return None
            issued += 1
            return issued - 1

        async def lane() -> None:
            nonlocal units
            while (i := next_index()) is not None:
                if rate:
                    wait = started + i / rate - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                method, request, n = make(i)
                t0 = time.perf_counter()
                try:
                    await getattr(stub, method)(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t0)
                units += n

        async def report() -> None:
            while True:
                await asyncio.sleep(1.0)
                elapsed = time.perf_counter() - started
                total = duration if duration is not None else None
                done = f"{elapsed / total:4.0%}" if total else f"{issued:,} requests"
                if progress is not None:
                    progress(f"\r  {done}  {len(latencies) / elapsed:,.0f} req/s  ")

        reporter = asyncio.create_task(report())
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        reporter.cancel()
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    ms = 1000.0
    return LoadResult(
        target=target,
        mode=mode,
        concurrency=concurrency,
        requests=len(latencies),
        errors=sum(errors.values()),
        seconds=round(seconds, 3),
        rps=len(latencies) / seconds,
        units_per_second=units / seconds,
        p50_ms=_percentile(ordered, 0.50) * ms,
        p90_ms=_percentile(ordered, 0.90) * ms,
        p99_ms=_percentile(ordered, 0.99) * ms,
        p999_ms=_percentile(ordered, 0.999) * ms,
        max_ms=(ordered[-1] if ordered else math.nan) * ms,
        error_codes=errors,
    )


def run_load(
    target: str,
    *,
    concurrency: int = 32,
    duration: float | None = 10.0,
    requests: int | None = None,
    rate: float | None = None,
    mode: str = "unary",
    batch_size: int = 100,
    experiment_keys: list[str] | None = None,
    track_share: float = 0.0,
    progress: Callable[[str], None] | None = None,
    seed: int = 1,
) -> LoadResult:
    return asyncio.run(
        _run(
            target,
            concurrency=concurrency,
            duration=duration,
            requests=requests,
            rate=rate,
            mode=mode,
            batch_size=batch_size,
            experiment_keys=experiment_keys or [],
            track_share=track_share,
            progress=progress,
            seed=seed,
        )
    )


# -- the baseline: same service, same messages, nothing done --------------------------------------


class EmptyServicer(pb_grpc.AssignmentServiceServicer):
    """Answers every call at once with an empty, well-formed response (no assignment work)."""

    def Assign(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.AssignResponse()

    def AssignBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.AssignBatchResponse(responses=[pb.AssignResponse() for _ in request.requests])

    def Track(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.TrackResponse(event_id=request.event_id)

    def TrackBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.TrackBatchResponse(event_ids=[e.event_id for e in request.events])


class AsyncEmptyServicer(pb_grpc.AssignmentServiceServicer):
    """:class:`EmptyServicer` as coroutines, for a ``grpc.aio`` server like abkit's own."""

    async def Assign(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.AssignResponse()

    async def AssignBatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.AssignBatchResponse(responses=[pb.AssignResponse() for _ in request.requests])

    async def Track(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.TrackResponse(event_id=request.event_id)

    async def TrackBatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.TrackBatchResponse(event_ids=[e.event_id for e in request.events])


def serve_baseline(address: str, workers: int = 16) -> None:
    """Run the empty-handler server (grpcio's synchronous one) until killed (prints ``port N``
    once listening)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_AssignmentServiceServicer_to_server(EmptyServicer(), server)
    port = server.add_insecure_port(address)
    server.start()
    sys.stdout.write(f"baseline listening on port {port}\n")
    sys.stdout.flush()
    server.wait_for_termination()


async def serve_baseline_aio(address: str) -> None:
    """The empty handlers on a ``grpc.aio`` server, until killed."""
    server = grpc.aio.server()
    pb_grpc.add_AssignmentServiceServicer_to_server(AsyncEmptyServicer(), server)
    port = server.add_insecure_port(address)
    await server.start()
    sys.stdout.write(f"baseline (aio) listening on port {port}\n")
    sys.stdout.flush()
    await server.wait_for_termination()


if __name__ == "__main__":  # python -m abkit.tools.loadtest ADDRESS [--aio]: a baseline server
    where = next((a for a in sys.argv[1:] if not a.startswith("--")), "127.0.0.1:0")
    if "--aio" in sys.argv[1:]:
        # The loop abkit's server would run on here (ABKIT_GRPC_EVENT_LOOP, default auto): the
        # same loop on both sides of a comparison.
        kind = os.environ.get("ABKIT_GRPC_EVENT_LOOP", "auto")
        with asyncio.Runner(loop_factory=lambda: loops.new_loop(kind)) as runner:
            runner.run(serve_baseline_aio(where))
    else:
        serve_baseline(where, int(os.environ.get("WORKERS", "16")))
