"""JSON documents of the results: the API's format and ``abkit results --format json``.

Numbers are the snapshot's, unrounded; JSON has no NaN or infinity, so an unknown value or an
unbounded interval end is ``null`` (as in the snapshots themselves). Times are ISO 8601 UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from abkit.core.documents import finite_or_none
from abkit.ports import DecisionRecord, ModelVersion
from abkit.report import wording
from abkit.report.verdict import verdict
from abkit.services.views import (
    ComparisonView,
    ExperimentResults,
    LookView,
    RegistryChange,
    ScaledEffect,
    Series,
    TimelineEntry,
)


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _effect(e: ScaledEffect) -> dict[str, Any]:
    return {
        "estimate": finite_or_none(e.value),
        "low": finite_or_none(e.low),
        "high": finite_or_none(e.high),
        "exact": e.exact,
    }


def comparison_doc(c: ComparisonView) -> dict[str, Any]:
    return {
        "metric": c.metric,
        "role": c.role.value,
        "arm": c.arm,
        "kind": c.kind.value if c.kind is not None else "",
        "direction": c.direction.value,
        "n_control": c.n_control,
        "n_treatment": c.n_treatment,
        "control_mean": finite_or_none(c.control_mean),
        "treatment_mean": finite_or_none(c.treatment_mean),
        "tested_scale": "relative" if c.tested_relative else "absolute",
        "absolute": _effect(c.absolute),
        "relative": _effect(c.relative),
        "p_value": finite_or_none(c.p_value),
        "alpha": finite_or_none(c.alpha),
        "status": c.status.value if c.status is not None else "unknown",
        "method": c.method.value if c.method is not None else "",
        "boundary": finite_or_none(c.boundary),
        "information_fraction": finite_or_none(c.information_fraction),
        "rule": wording.boundary(c),
        "minimum_effect": finite_or_none(c.minimum_effect),
        "margin": finite_or_none(c.margin),
        "better": c.better,
        "worse": c.worse,
        "harmed": c.harmed,
        "non_inferior": c.non_inferior,
        "harm_p_value": finite_or_none(c.harm_p_value),
        "non_inferiority_p_value": finite_or_none(c.non_inferiority_p_value),
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
            "status": srm.status.value,
            "p_value": finite_or_none(srm.p_value),
            "sequential_p_value": finite_or_none(srm.sequential_p_value),
        },
        "min_units_per_arm": look.min_units_per_arm,
        "alpha": finite_or_none(look.alpha),
    }


def summary_doc(r: ExperimentResults, now: datetime) -> dict[str, Any]:
    """One experiment as on the list page."""
    banner = verdict(r)
    running = (r.concluded_at or now) - r.started_at if r.started_at is not None else None
    return {
        "key": r.key,
        "name": r.name,
        "status": r.status.value,
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
        "verdict": {"tone": banner.tone, "title": banner.title, "details": list(banner.details)},
    }


def results_doc(r: ExperimentResults, now: datetime) -> dict[str, Any]:
    """Everything on the detail page except the chart (see :func:`series_doc`)."""
    doc = {
        **summary_doc(r, now),
        "description": r.description,
        "look": _look_doc(r.look),
        "numbers_look": r.numbers_look,
        "comparisons": [comparison_doc(c) for c in r.comparisons],
        "timeline": [entry_doc(e) for e in r.timeline],
        "decision": entry_doc(r.decision) if r.decision is not None else None,
    }
    if r.registry_pending:  # only while a registry change (MLflow aliases) waits
        doc["registry_pending"] = [
            {
                "decision_id": p.decision_id,
                "action": p.action,
                "change": p.description,
                "attempts": p.attempts,
                "last_error": p.last_error,
                "created_at": _time(p.created_at),
                "next_attempt_at": _time(p.next_attempt_at),
            }
            for p in r.registry_pending
        ]
    return doc


def series_doc(series: Sequence[Series]) -> list[dict[str, Any]]:
    return [
        {
            "metric": s.latest.metric,
            "role": s.latest.role.value,
            "arm": s.latest.arm,
            "kind": s.latest.kind.value if s.latest.kind is not None else "",
            "scale": "relative" if s.latest.tested_relative else "absolute",
            "alpha": finite_or_none(s.latest.alpha),
            "points": [
                {
                    "look": p.look,
                    "at": _time(p.at),
                    "units": p.units,
                    "estimate": finite_or_none(p.estimate),
                    "low": finite_or_none(p.low),
                    "high": finite_or_none(p.high),
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
        "status": v.status.value,
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
