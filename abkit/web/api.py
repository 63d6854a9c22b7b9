"""The JSON and CSV API (one endpoint per page) and the health probes.

=========================================  ==================================================
``GET /api/experiments``                   the list page: status, arms, units, last decision
``GET /api/experiments/<key>/results``     the detail page: numbers, verdict, SRM, timeline
``GET /api/experiments/<key>/series``      the chart: estimate and interval at every look
``GET /api/experiments/<key>/history``     the audit trail with every statistics snapshot
``GET /api/models``                        the model registry and its promotions/rollbacks
``GET /api/...csv``                        the same tables as CSV (``experiments.csv``,
                                           ``<key>/results.csv``, ``<key>/series.csv``,
                                           ``<key>/history.csv``, ``models.csv``)
``GET /healthz``, ``GET /readyz``          process up; store reachable (503 otherwise)
=========================================  ==================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from flask import Blueprint, Response, jsonify

from abkit.errors import StoreUnavailableError
from abkit.report import document, tables
from abkit.services.results import registry_changes
from abkit.web.context import services

bp = Blueprint("api", __name__, url_prefix="/api")
health = Blueprint("health", __name__)


def _csv(name: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Response:
    return Response(
        tables.csv_text(columns, rows),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.get("/experiments")
def experiments() -> Response:
    web = services()
    now = web.runtime.clock.now()
    experiments = web.runtime.results.experiments()
    return jsonify(experiments=[document.summary_doc(r, now) for r in experiments])


@bp.get("/experiments.csv")
def experiments_csv() -> Response:
    rows = tables.experiment_rows(services().runtime.results.experiments())
    return _csv("experiments.csv", tables.EXPERIMENT_COLUMNS, rows)


@bp.get("/experiments/<key>")
@bp.get("/experiments/<key>/results")
def results(key: str) -> Response:
    web = services()
    return jsonify(document.results_doc(web.runtime.results.results(key), web.runtime.clock.now()))


@bp.get("/experiments/<key>/results.csv")
def results_csv(key: str) -> Response:
    r = services().runtime.results.results(key)
    return _csv(f"{key}-results.csv", tables.RESULTS_COLUMNS, tables.results_rows(r))


@bp.get("/experiments/<key>/series")
def series(key: str) -> Response:
    r = services().runtime.results.results(key)
    return jsonify(experiment=key, series=document.series_doc(r.series))


@bp.get("/experiments/<key>/series.csv")
def series_csv(key: str) -> Response:
    r = services().runtime.results.results(key)
    return _csv(f"{key}-series.csv", tables.SERIES_COLUMNS, tables.series_rows(key, r.series))


@bp.get("/experiments/<key>/history")
def history(key: str) -> Response:
    decisions = services().runtime.experiments.history(key)
    return jsonify(experiment=key, decisions=[document.history_doc(d) for d in decisions])


@bp.get("/experiments/<key>/history.csv")
def history_csv(key: str) -> Response:
    rows = tables.history_rows(key, services().runtime.experiments.history(key))
    return _csv(f"{key}-history.csv", tables.HISTORY_COLUMNS, rows)


@bp.get("/models")
def models() -> Response:
    web = services()
    changes = registry_changes(web.runtime.results.experiments())
    return jsonify(
        versions=[document.model_doc(v) for v in web.runtime.results.model_versions()],
        changes=[document.change_doc(c) for c in changes],
    )


@bp.get("/models.csv")
def models_csv() -> Response:
    rows = tables.model_rows(services().runtime.results.model_versions())
    return _csv("models.csv", tables.MODEL_COLUMNS, rows)


@health.get("/healthz")
def healthz() -> Response:
    """The process is up and serving HTTP (a liveness probe: no dependency is checked)."""
    return jsonify(status="ok")


@health.get("/readyz")
def readyz() -> tuple[Response, int]:
    """The store answers (a readiness probe): 200, or 503 with the reason."""
    body: dict[str, Any]
    try:
        services().runtime.store.ping()
    except StoreUnavailableError as exc:
        body = {"status": "unavailable", "error": str(exc)}
        return jsonify(body), 503
    return jsonify(status="ready"), 200
