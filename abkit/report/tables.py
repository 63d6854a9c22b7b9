"""CSV tables of the results: the API's ``.csv`` endpoints and ``abkit results --format csv``.

One column list and one row builder per table. Numbers are written unrounded; unknown and
unbounded values are empty cells. Cells that a spreadsheet would run as a formula (text
starting with ``= + - @``) are prefixed with ``'``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from datetime import datetime

from abkit.ports import DecisionRecord, ModelVersion
from abkit.report import wording
from abkit.services.views import ExperimentResults, Series

RESULTS_COLUMNS = (
    "experiment_key", "look", "metric", "role", "arm", "kind", "n_control", "n_treatment",
    "control_mean", "treatment_mean", "tested_scale", "estimate", "ci_low", "ci_high",
    "absolute_lift", "absolute_low", "absolute_high", "relative_lift", "relative_low",
    "relative_high", "p_value", "alpha", "method", "boundary", "status", "verdict",
)  # fmt: skip


def results_rows(r: ExperimentResults) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for c in r.comparisons:
        t, a, rel = c.tested, c.absolute, c.relative
        rows.append(
            (
                r.key,
                r.numbers_look,
                c.metric,
                c.role.value,
                c.arm,
                c.kind.value if c.kind is not None else "",
                c.n_control,
                c.n_treatment,
                c.control_mean,
                c.treatment_mean,
                "relative" if c.tested_relative else "absolute",
                t.value,
                t.low,
                t.high,
                a.value,
                a.low,
                a.high,
                rel.value,
                rel.low,
                rel.high,
                c.p_value,
                c.alpha,
                c.method.value if c.method is not None else "",
                c.boundary,
                c.status.value if c.status is not None else "unknown",
                wording.status(c),
            )
        )
    return rows


SERIES_COLUMNS = (
    "experiment_key", "metric", "role", "arm", "scale", "look", "at", "units", "estimate",
    "ci_low", "ci_high",
)  # fmt: skip


def series_rows(key: str, series: Sequence[Series]) -> list[tuple[object, ...]]:
    return [
        (
            key,
            s.latest.metric,
            s.latest.role.value,
            s.latest.arm,
            "relative" if s.latest.tested_relative else "absolute",
            p.look,
            p.at,
            p.units,
            p.estimate,
            p.low,
            p.high,
        )
        for s in series
        for p in s.points
    ]


EXPERIMENT_COLUMNS = (
    "experiment_key", "name", "status", "model", "rollout_arm", "arm", "model_version", "weight",
    "control", "units", "started_at", "concluded_at", "last_action", "last_decided_at",
)  # fmt: skip


def experiment_rows(experiments: Iterable[ExperimentResults]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for r in experiments:
        last = r.timeline[-1] if r.timeline else None
        rows += [
            (
                r.key,
                r.name,
                r.status.value,
                r.model,
                r.rollout_arm,
                a.key,
                a.model_version,
                a.weight,
                a.control,
                a.units,
                r.started_at,
                r.concluded_at,
                last.action if last else None,
                last.decided_at if last else None,
            )
            for a in r.arms
        ]
    return rows


HISTORY_COLUMNS = (
    "experiment_key", "decided_at", "look", "action", "arm", "actor", "reason", "config_checksum",
)  # fmt: skip


def history_rows(key: str, decisions: Iterable[DecisionRecord]) -> list[tuple[object, ...]]:
    return [
        (key, d.decided_at, d.look, d.action, d.arm_key, d.actor, d.reason, d.config_checksum)
        for d in decisions
    ]


MODEL_COLUMNS = ("model", "version", "status", "experiment_key", "created_at", "updated_at")


def model_rows(versions: Iterable[ModelVersion]) -> list[tuple[object, ...]]:
    return [
        (v.model, v.version, v.status.value, v.experiment_key, v.created_at, v.updated_at)
        for v in versions
    ]


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """RFC 4180 CSV with a header row; unknown and unbounded values are empty cells."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()
