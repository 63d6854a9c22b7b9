"""The results page as plain text: ``abkit results KEY`` (the default ``table`` format)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from abkit.core.snapshot import Role
from abkit.report.verdict import verdict
from abkit.report.wording import (
    boundary,
    count,
    effect,
    interval,
    mean,
    p_value,
    running_time,
    share,
    status,
)
from abkit.services.views import ComparisonView, ExperimentResults


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def results_text(r: ExperimentResults, now: datetime) -> str:
    """The detail page as plain text (``abkit results KEY``)."""
    v = verdict(r)
    lines = [
        f"{r.key} ({r.name or r.key}): {r.status}, model {r.model}, running {running_time(r, now)}",
        "",
        v.title,
        "=" * len(v.title),
        *(f"  - {d}" for d in v.details),
        "",
    ]
    arms = [("ARM", "MODEL VERSION", "WEIGHT", "UNITS")]
    arms += [(a.key, a.model_version, share(a.weight), count(a.units)) for a in r.arms]
    lines += [*_columns(arms), ""]
    if r.look is not None and r.look.srm is not None:
        srm = r.look.srm
        state = "MISMATCH" if srm.mismatch else srm.status.value.replace("_", " ")
        lines += [f"traffic split (SRM): {state}, sequential p = {p_value(srm.sequential_p_value)}"]
    control = next((a.key for a in r.arms if a.control), "control")
    for metric in dict.fromkeys((c.role, c.metric) for c in r.comparisons):
        rows = [c for c in r.comparisons if (c.role, c.metric) == metric]
        lines += ["", *_metric_table(control, rows)]
    if r.look is None:
        lines += ["no look yet: numbers appear after the worker's first look"]
    return "\n".join(lines)


def _metric_table(control: str, rows: Sequence[ComparisonView]) -> list[str]:
    """One metric: its title, the control's baseline row and a row per treatment arm."""
    first = rows[0]
    kind = f", {first.kind.value}" if first.kind is not None else ""
    table = [("ARM", "UNITS", "MEAN", "ABS LIFT", "INTERVAL", "REL LIFT", "INTERVAL", "P",
              "BOUNDARY", "VERDICT")]  # fmt: skip
    table.append((control, count(first.n_control), mean(first.control_mean, first.kind),
                  "baseline", "", "", "", "", "", ""))  # fmt: skip
    for c in rows:
        p = c.p_value if c.role is Role.PRIMARY else c.non_inferiority_p_value
        table.append(
            (
                c.arm,
                count(c.n_treatment),
                mean(c.treatment_mean, c.kind),
                effect(c.absolute.value, c.kind, False),
                interval(c.absolute, c.kind, False),
                effect(c.relative.value, c.kind, True),
                interval(c.relative, c.kind, True),
                p_value(p),
                boundary(c),
                status(c),
            )
        )
    return [f"{first.metric} ({first.role}{kind})", *_columns(table)]
