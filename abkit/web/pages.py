"""The HTML pages: experiments list, experiment results, model registry, login.

Views only read from :class:`~abkit.services.results.ResultsService` (cached per look) and
hand plain values to small, escaped templates; every number is the snapshot's, formatted by
:mod:`abkit.report.wording`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from abkit.core.decision import Action
from abkit.core.metrics import MetricKind
from abkit.core.model import ExperimentStatus
from abkit.core.snapshot import Role
from abkit.report import wording
from abkit.report.chart import build_chart
from abkit.report.verdict import verdict
from abkit.services.results import registry_changes
from abkit.services.views import ComparisonView, ExperimentResults, TimelineEntry
from abkit.web import auth
from abkit.web.context import services

bp = Blueprint("pages", __name__)

DONE_MESSAGES = {
    "pause": "Paused: everyone now gets the control model.",
    "resume": "Resumed: units are randomized again.",
    "promote": "Promoted: the chosen arm now serves everyone and its model version is live.",
    "rollback": "Rolled back: everyone now gets the control model.",
}
MIN_REFRESH_SECONDS, MAX_REFRESH_SECONDS = 15, 300


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """A timeline entry, or a run of consecutive "continue" looks shown as one row."""

    first: TimelineEntry
    last: TimelineEntry
    count: int


def group_timeline(entries: Sequence[TimelineEntry]) -> list[TimelineRow]:
    """Newest first; consecutive "continue" looks collapse into one row with the latest reason."""
    rows: list[TimelineRow] = []
    for entry in entries:
        previous = rows[-1] if rows else None
        if previous is not None and entry.action == Action.CONTINUE == previous.last.action:
            rows[-1] = TimelineRow(previous.first, entry, previous.count + 1)
        else:
            rows.append(TimelineRow(entry, entry, 1))
    return rows[::-1]


@dataclass(frozen=True, slots=True)
class MetricTable:
    metric: str
    role: Role
    kind: MetricKind | None
    rows: tuple[ComparisonView, ...]

    @property
    def control(self) -> ComparisonView:
        return self.rows[0]


def metric_tables(r: ExperimentResults) -> list[MetricTable]:
    tables: dict[tuple[Role, str], list[ComparisonView]] = {}
    for c in r.comparisons:
        tables.setdefault((c.role, c.metric), []).append(c)
    ordered = sorted(tables.items(), key=lambda kv: (kv[0][0] is not Role.PRIMARY, kv[0][1]))
    return [
        MetricTable(metric, role, rows[0].kind, tuple(rows)) for (role, metric), rows in ordered
    ]


def _refresh_seconds(r: ExperimentResults) -> int | None:
    """Running experiments reload themselves about once per look (cheap: cached per look)."""
    if r.status is not ExperimentStatus.RUNNING or r.look is None:
        return None
    interval = r.look.look_interval_seconds or MAX_REFRESH_SECONDS
    return max(MIN_REFRESH_SECONDS, min(MAX_REFRESH_SECONDS, interval))


@bp.get("/")
@bp.get("/experiments")
def experiments() -> str:
    web = services()
    listed = web.runtime.results.experiments()
    now = web.runtime.clock.now()
    rows = [(r, verdict(r), wording.running_time(r, now)) for r in listed]
    return render_template("experiments.html", rows=rows, now=now)


@bp.get("/experiments/<key>")
def experiment(key: str) -> str:
    web = services()
    r = web.runtime.results.results(key)
    now = web.runtime.clock.now()
    charts = [(s, build_chart(s, r.timeline)) for s in r.series]
    done = request.args.get("done", "")
    return render_template(
        "experiment.html",
        r=r,
        now=now,
        verdict=verdict(r),
        tables=metric_tables(r),
        charts=charts,
        timeline=group_timeline(r.timeline),
        running=wording.running_time(r, now),
        done=DONE_MESSAGES.get(done),
        refresh_seconds=_refresh_seconds(r),
        admin=web.access.admin_enabled,
        control=next((a for a in r.arms if a.control), None),
    )


@bp.get("/models")
def models() -> str:
    web = services()
    versions = web.runtime.results.model_versions()
    by_model: dict[str, list[object]] = {}
    for v in versions:
        by_model.setdefault(v.model, []).append(v)
    changes = registry_changes(web.runtime.results.experiments())
    return render_template("models.html", by_model=by_model, changes=changes)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int] | str:
    web = services()
    target = auth.safe_next(request.values.get("next"), url_for("pages.experiments"))
    if not web.access.protected:
        return redirect(target, code=303)
    if request.method == "GET":
        return render_template("login.html", next=target, error=None)
    auth.check_csrf(web.access)
    token = request.form.get("token", "")[: auth.MAX_TOKEN_LENGTH]
    if not token or not web.access.reader_token(token):
        return render_template("login.html", next=target, error="That token is not valid."), 401
    response = redirect(target, code=303)
    auth.set_session(response, web.access)
    return response


@bp.post("/logout")
def logout() -> Response:
    auth.check_csrf(services().access)
    response = redirect(url_for("pages.login"), code=303)
    response.delete_cookie(auth.SESSION_COOKIE)
    return response
