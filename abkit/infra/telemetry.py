"""OpenTelemetry: the only module that creates providers and exporters.

Configured through the standard variables only: ``OTEL_TRACES_EXPORTER`` picks the exporter
(``none`` by default, ``console``, ``otlp`` when the ``otlp`` extra is installed), and the SDK
reads the rest itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``, ...).

A :class:`Telemetry` value is passed explicitly to the servers, so tests build their own with an
in-memory exporter instead of resetting process-wide globals. Only :func:`configure` -- called once
by the CLI -- also installs the provider globally, for libraries that look it up there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from abkit import __version__
from abkit.config import Settings
from abkit.errors import ValidationError

INSTRUMENTATION_NAME = "abkit"


@dataclass(frozen=True)
class Telemetry:
    tracer_provider: TracerProvider = field(default_factory=TracerProvider)
    meter_provider: MeterProvider = field(default_factory=MeterProvider)
    records_spans: bool = True
    """False when no span is ever recorded (no exporter, no sampler asked for): RPCs then only
    need trace and span *ids* for the rows they write, and skip the span machinery."""
    records_metrics: bool = True
    """False when no metric reader is configured: per-RPC measurements would be computed and
    thrown away (a histogram ``record`` costs ~4 us even then), so RPCs skip them."""

    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__)

    def meter(self) -> metrics.Meter:
        return self.meter_provider.get_meter(INSTRUMENTATION_NAME, __version__)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _exporter(name: str) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise ValidationError(
                "OTEL_TRACES_EXPORTER",
                "otlp needs the OTLP exporter: pip install 'abkit[otlp]'",
            ) from exc
        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    raise ValidationError(
        "OTEL_TRACES_EXPORTER", f"unknown exporter {name!r}; use none, console or otlp"
    )


def _metric_exporter(name: str) -> MetricExporter | None:
    if name == "none":
        return None
    if name == "console":
        return ConsoleMetricExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPMetricExporter,
            )
        except ImportError as exc:
            raise ValidationError(
                "OTEL_METRICS_EXPORTER", "otlp needs the OTLP exporter: pip install 'abkit[otlp]'"
            ) from exc
        exporter: MetricExporter = OTLPMetricExporter()
        return exporter
    raise ValidationError(
        "OTEL_METRICS_EXPORTER", f"unknown exporter {name!r}; use none, console or otlp"
    )


def _prometheus_reader(port: int) -> MetricReader:
    try:
        from opentelemetry.exporter.prometheus import (  # type: ignore[import-not-found,unused-ignore]
            PrometheusMetricReader,
        )
        from prometheus_client import (  # type: ignore[import-not-found,unused-ignore]
            start_http_server,
        )
    except ImportError as exc:
        raise ValidationError(
            "ABKIT_METRICS_PORT", "the Prometheus endpoint needs: pip install 'abkit[prometheus]'"
        ) from exc
    start_http_server(port)
    reader: MetricReader = PrometheusMetricReader()
    return reader


def build(settings: Settings, service_name: str = "abkit") -> Telemetry:
    """Providers and exporters from the settings, not installed globally."""
    name = settings.otel_service_name or service_name
    resource = Resource.create({"service.name": name, "service.version": __version__})
    if "service.instance.id" not in resource.attributes:
        # Telemetry from several processes of one service (abkit grpc --processes N, replicas)
        # must not merge into one series: each process is an instance of its own.
        resource = resource.merge(Resource({"service.instance.id": str(uuid.uuid4())}))
    exporters = [
        e
        for e in (_exporter(n.strip() or "none") for n in settings.otel_traces_exporter.split(","))
        if e is not None
    ]
    # Recording a span costs ~35 us here, a non-recording one ~6 us; both have valid ids. With
    # nowhere to send spans and no sampler asked for, do not record them.
    sampler = ALWAYS_OFF if not exporters and not settings.otel_traces_sampler else None
    provider = TracerProvider(resource=resource, sampler=sampler)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    readers: list[MetricReader] = []
    for name in (n.strip() for n in settings.otel_metrics_exporter.split(",")):
        metric_exporter = _metric_exporter(name or "none")
        if metric_exporter is not None:
            readers.append(PeriodicExportingMetricReader(metric_exporter))
    if settings.metrics_port:
        readers.append(_prometheus_reader(settings.metrics_port))
    # Exemplars (trace ids attached to measurements) would look up the current span on every
    # measurement of the request path; nothing here consumes them.
    meters = MeterProvider(
        resource=resource, metric_readers=readers, exemplar_filter=AlwaysOffExemplarFilter()
    )
    return Telemetry(provider, meters, records_spans=sampler is None, records_metrics=bool(readers))


def configure(settings: Settings, service_name: str = "abkit") -> Telemetry:
    """:func:`build`, then install the tracer provider globally (call once, from the CLI)."""
    telemetry = build(settings, service_name)
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    return telemetry
