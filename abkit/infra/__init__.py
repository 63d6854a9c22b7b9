"""Infrastructure the use cases run on, behind the ports:

* :mod:`~abkit.infra.journal` -- the local journal: every accepted exposure and event is made
  durable here (group-committed) before the answer; :mod:`~abkit.infra.recorder` appends to it,
  :mod:`~abkit.infra.drain` copies it into the store;
* :mod:`~abkit.infra.notify` -- decision webhooks;
* :mod:`~abkit.infra.mlflow_registry` -- the MLflow Model Registry (extra ``abkit[mlflow]``),
  :mod:`~abkit.infra.registry_memory` its twin for tests, and :mod:`~abkit.infra.outbox`, the
  thread that carries out the registry changes decisions record;
* :mod:`~abkit.infra.telemetry` -- OpenTelemetry set-up (the only place that configures
  providers and exporters) and :mod:`~abkit.infra.instruments`, the metrics it records;
* :mod:`~abkit.infra.clock` -- the system clock.
"""
