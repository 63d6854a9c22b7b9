"""JSON documents and CSV tables of the results: the API's and ``abkit results``' formats.

Numbers are the snapshot's, unrounded; JSON has no NaN or infinity, so an unknown value or an
unbounded interval end is ``null`` (as in the snapshots themselves). Times are ISO 8601 UTC.
CSV cells that a spreadsheet would run as a formula (text starting with ``= + - @``) are
prefixed with ``'``; numbers are written as numbers.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from abkit.ports import DecisionRecord, ModelVersion
from abkit.results import (
    TERMINAL_ACTIONS,
    ComparisonView,
    Effect,
    ExperimentResults,
    LookView,
    Series,
    TimelineEntry,
)
from abkit.web import wording


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """A promotion, rollback or stop: which version of a model went (or stayed) live."""

    decided_at: datetime
    model: str
    experiment_key: str
    action: str
    arm: str | None
    version: str | None
    actor: str
    reasons: tuple[str, ...]


def registry_changes(experiments: Iterable[ExperimentResults]) -> list[RegistryChange]:
    """Every promotion, rollback and stop of every experiment, newest first."""
    changes = []
    for r in experiments:
        for e in r.timeline:
            if e.action in TERMINAL_ACTIONS:
                arm = r.arm(e.arm)
                version = arm.model_version if arm is not None else None
                changes.append(
                    RegistryChange(
                        e.decided_at, r.model, r.key, e.action, e.arm, version, e.actor, e.reasons
                    )
                )
    return sorted(changes, key=lambda c: c.decided_at, reverse=True)


def number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _effect(e: Effect) -> dict[str, Any]:
    return {
        "estimate": number(e.value),
        "low": number(e.low),
        "high": number(e.high),
        "exact": e.exact,
    }


def comparison_doc(c: ComparisonView) -> dict[str, Any]:
    return {
        "metric": c.metric,
        "role": c.role,
        "arm": c.arm,
        "kind": c.kind,
        "direction": c.direction,
        "n_control": c.n_control,
        "n_treatment": c.n_treatment,
        "control_mean": number(c.control_mean),
        "treatment_mean": number(c.treatment_mean),
        "tested_scale": "relative" if c.tested_relative else "absolute",
        "absolute": _effect(c.absolute),
        "relative": _effect(c.relative),
        "p_value": number(c.p_value),
        "alpha": number(c.alpha),
        "status": c.status,
        "method": c.method,
        "boundary": number(c.boundary),
        "information_fraction": number(c.information_fraction),
        "rule": wording.boundary(c),
        "minimum_effect": number(c.minimum_effect),
        "margin": number(c.margin),
        "better": c.better,
        "worse": c.worse,
        "harmed": c.harmed,
        "non_inferior": c.non_inferior,
        "harm_p_value": number(c.harm_p_value),
        "non_inferiority_p_value": number(c.non_inferiority_p_value),
        "verdict": wording.status(c),
    }


def entry_doc(e: TimelineEntry) -> dict[str, Any]:
    return {
        "decided_at": _time(e.decided_at),
        "look": e.look,
        "action": e.action,
        "arm": e.arm,
        "actor": e.actor,
        "reasons": list(e.reasons),
    }


def _look_doc(look: LookView | None) -> dict[str, Any] | None:
    if look is None:
        return None
    srm = look.srm
    return {
        "look": look.look,
        "at": _time(look.at),
        "action": look.action,
        "reasons": list(look.reasons),
        "error": look.error,
        "srm": None
        if srm is None
        else {
            "mismatch": srm.mismatch,
            "status": srm.status,
            "p_value": number(srm.p_value),
            "sequential_p_value": number(srm.sequential_p_value),
        },
        "min_units_per_arm": look.min_units_per_arm,
        "alpha": number(look.alpha),
    }


def summary_doc(r: ExperimentResults, now: datetime) -> dict[str, Any]:
    """One experiment as on the list page."""
    verdict = wording.verdict(r)
    running = (r.concluded_at or now) - r.started_at if r.started_at is not None else None
    return {
        "key": r.key,
        "name": r.name,
        "status": r.status,
        "model": r.model,
        "rollout_arm": r.rollout_arm,
        "arms": [
            {
                "key": a.key,
                "model_version": a.model_version,
                "weight": a.weight,
                "control": a.control,
                "units": a.units,
            }
            for a in r.arms
        ],
        "started_at": _time(r.started_at),
        "concluded_at": _time(r.concluded_at),
        "running_seconds": running.total_seconds() if running is not None else None,
        "last_decision": entry_doc(r.timeline[-1]) if r.timeline else None,
        "verdict": {"tone": verdict.tone, "title": verdict.title, "details": list(verdict.details)},
    }


def results_doc(r: ExperimentResults, now: datetime) -> dict[str, Any]:
    """Everything on the detail page except the chart (see :func:`series_doc`)."""
    return {
        **summary_doc(r, now),
        "description": r.description,
        "look": _look_doc(r.look),
        "numbers_look": r.numbers_look,
        "comparisons": [comparison_doc(c) for c in r.comparisons],
        "timeline": [entry_doc(e) for e in r.timeline],
        "decision": entry_doc(r.decision) if r.decision is not None else None,
    }


def series_doc(series: Sequence[Series]) -> list[dict[str, Any]]:
    return [
        {
            "metric": s.latest.metric,
            "role": s.latest.role,
            "arm": s.latest.arm,
            "kind": s.latest.kind,
            "scale": "relative" if s.latest.tested_relative else "absolute",
            "alpha": number(s.latest.alpha),
            "points": [
                {
                    "look": p.look,
                    "at": _time(p.at),
                    "units": p.units,
                    "estimate": number(p.estimate),
                    "low": number(p.low),
                    "high": number(p.high),
                }
                for p in s.points
            ],
        }
        for s in series
    ]


def history_doc(d: DecisionRecord) -> dict[str, Any]:
    """One audit entry with its full snapshot (the format of ``experiment history --format
    json``)."""
    return {
        "decided_at": _time(d.decided_at),
        "look": d.look,
        "action": d.action,
        "arm": d.arm_key,
        "actor": d.actor,
        "reason": d.reason,
        "config_checksum": d.config_checksum,
        "snapshot": d.snapshot,
    }


def model_doc(v: ModelVersion) -> dict[str, Any]:
    return {
        "model": v.model,
        "version": v.version,
        "status": v.status,
        "experiment_key": v.experiment_key,
        "created_at": _time(v.created_at),
        "updated_at": _time(v.updated_at),
    }


def change_doc(c: RegistryChange) -> dict[str, Any]:
    return {
        "decided_at": _time(c.decided_at),
        "model": c.model,
        "experiment_key": c.experiment_key,
        "action": c.action,
        "arm": c.arm,
        "version": c.version,
        "actor": c.actor,
        "reasons": list(c.reasons),
    }


# -- CSV -------------------------------------------------------------------------------------

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
                c.role,
                c.arm,
                c.kind,
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
                c.method,
                c.boundary,
                c.status,
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
            s.latest.role,
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
