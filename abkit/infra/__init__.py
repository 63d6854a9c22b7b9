"""Infrastructure the use cases run on, behind the ports:

* :mod:`~abkit.infra.writer` -- batched, background writing of exposures and events;
* :mod:`~abkit.infra.spool` -- the bounded on-disk log they wait in while the store is away;
* :mod:`~abkit.infra.notify` -- decision webhooks;
* :mod:`~abkit.infra.telemetry` -- OpenTelemetry set-up (the only place that configures
  providers and exporters) and :mod:`~abkit.infra.instruments`, the metrics it records;
* :mod:`~abkit.infra.clock` -- the system clock.
"""
