"""The decision policy: every action and every reason, from real analyses of crafted summaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from abkit.core.analysis import analyze, failed
from abkit.core.decision import Action
from abkit.core.model import Arm, Experiment, ExperimentStatus
from abkit.core.policy import Policy
from abkit.core.policy_document import policy_from_dict, policy_to_dict
from abkit.core.rules import decide
from abkit.core.snapshot import Analysis, MonitorStates
from abkit.core.stats import ArmSummary
from abkit.errors import ValidationError

T0 = datetime(2026, 5, 1, tzinfo=UTC)
EXPERIMENT = Experiment(
    "ranker",
    (Arm("control", "v1", 0.5, control=True), Arm("candidate", "v2", 0.5)),
    status=ExperimentStatus.RUNNING,
)
THREE_ARMS = Experiment(
    "ranker3",
    (Arm("control", "v1", 0.4, control=True), Arm("b", "v2", 0.3), Arm("c", "v3", 0.3)),
    status=ExperimentStatus.RUNNING,
)
POLICY_DOC: dict[str, Any] = {
    "primary": {"metric": "conversion", "kind": "binary", "minimum_effect": 0.01},
    "guardrails": [
        {
            "metric": "latency_ms",
            "kind": "continuous",
            "direction": "decrease",
            "margin": 0.05,
            "relative": True,
        }
    ],
    "min_units_per_arm": 1000,
    "min_duration": "1h",
    "max_duration": "7d",
    "max_units": 40_000,
}


def policy(**changes: Any) -> Policy:
    return policy_from_dict({**POLICY_DOC, **changes})


def conversions(n: int, rate: float) -> ArmSummary:
    k = round(n * rate)
    return ArmSummary(n, k, k)


def latency(n: int, mean: float, sd: float = 20.0) -> ArmSummary:
    return ArmSummary.from_moments(n, mean, sd * sd if n > 1 else 0.0)


def look(
    conv: dict[str, tuple[int, float]],
    lat: dict[str, tuple[int, float]] | None = None,
    *,
    p: Policy | None = None,
    experiment: Experiment = EXPERIMENT,
    hours: float = 24,
    state: MonitorStates | None = None,
) -> tuple[Analysis, Policy, datetime]:
    p = p or policy()
    lat = lat or {arm: (n, 100.0) for arm, (n, _) in conv.items()}
    summaries = {
        "conversion": {arm: conversions(n, r) for arm, (n, r) in conv.items()},
        "latency_ms": {arm: latency(n, m) for arm, (n, m) in lat.items()},
    }
    now = T0 + timedelta(hours=hours)
    analysis = analyze(experiment, p, summaries, state, look=1, at=now, started_at=T0)
    return analysis, p, now


def test_promote_when_the_primary_wins_beyond_the_minimum_effect_and_guardrails_hold() -> None:
    analysis, p, now = look({"control": (20_000, 0.10), "candidate": (20_000, 0.13)})
    decision = decide(analysis, p, now)
    assert decision.action is Action.PROMOTE and decision.arm == "candidate"
    assert "conversion improved in candidate" in decision.reason
    assert "beyond the minimum effect 0.01" in decision.reason
    assert "guardrails non-inferior: latency_ms" in decision.reason
    assert "SRM clean" in decision.reason


def test_significant_but_below_the_minimum_effect_keeps_going() -> None:
    analysis, p, now = look({"control": (40_000, 0.10), "candidate": (40_000, 0.107)})
    primary = analysis.primary()[0]
    assert primary.ci_low > 0  # significant...
    decision = decide(analysis, p, now)
    assert decision.action is Action.CONTINUE  # ...but not proven beyond the 0.01 worth shipping
    assert "not conclusive yet" in decision.reason


def test_rollback_when_the_primary_is_significantly_worse() -> None:
    analysis, p, now = look({"control": (20_000, 0.13), "candidate": (20_000, 0.10)}, hours=0.2)
    decision = decide(analysis, p, now)
    assert decision.action is Action.ROLLBACK and decision.arm == "control"
    assert "primary metric conversion is significantly worse in candidate" in decision.reason


def test_rollback_when_a_guardrail_is_harmed_beyond_its_margin() -> None:
    conv = {"control": (20_000, 0.10), "candidate": (20_000, 0.13)}  # the primary even wins
    analysis, p, now = look(conv, {"control": (20_000, 100.0), "candidate": (20_000, 115.0)})
    decision = decide(analysis, p, now)
    assert decision.action is Action.ROLLBACK and decision.arm == "control"
    assert (
        "guardrail latency_ms is harmed in candidate beyond its margin of 5.00%" in decision.reason
    )


def test_harm_within_the_margin_blocks_nothing_but_must_be_shown_non_inferior() -> None:
    conv = {"control": (20_000, 0.10), "candidate": (20_000, 0.13)}
    within = {"control": (20_000, 100.0), "candidate": (20_000, 102.0)}  # +2 %, margin 5 %
    analysis, p, now = look(conv, within)
    assert decide(analysis, p, now).action is Action.PROMOTE
    # With few units the +4 % is not yet shown to be under +5 %: wait, do not promote.
    noisy = {"control": (1_500, 100.0), "candidate": (1_500, 104.0)}
    analysis, p, now = look({"control": (1_500, 0.05), "candidate": (1_500, 0.15)}, noisy)
    decision = decide(analysis, p, now)
    assert decision.action is Action.CONTINUE
    assert "non-inferiority is not shown yet for latency_ms" in decision.reason


def test_sample_ratio_mismatch_rolls_back() -> None:
    analysis, p, now = look({"control": (20_000, 0.10), "candidate": (18_000, 0.10)})
    decision = decide(analysis, p, now)
    assert decision.action is Action.ROLLBACK
    assert "sample ratio mismatch" in decision.reason and "control 20,000" in decision.reason


def test_waits_for_minimum_units_and_duration() -> None:
    analysis, p, now = look({"control": (900, 0.05), "candidate": (900, 0.25)})
    decision = decide(analysis, p, now)
    assert decision.action is Action.CONTINUE
    assert "arms need 1,000 units each" in decision.reason
    analysis, p, now = look({"control": (20_000, 0.10), "candidate": (20_000, 0.13)}, hours=0.5)
    decision = decide(analysis, p, now)
    assert decision.action is Action.CONTINUE
    assert "minimum duration 1.0 h is not reached" in decision.reason


def test_stop_inconclusive_at_max_duration() -> None:
    analysis, p, now = look(
        {"control": (20_000, 0.10), "candidate": (20_000, 0.1005)}, hours=24 * 7
    )
    decision = decide(analysis, p, now)
    assert decision.action is Action.STOP_INCONCLUSIVE and decision.arm == "control"
    assert "maximum duration 7.0 d is reached without a winner" in decision.reason


def test_stop_inconclusive_at_the_final_group_sequential_look() -> None:
    p = policy(mode="group_sequential", max_units=4000)
    analysis, p, now = look({"control": (2000, 0.10), "candidate": (2000, 0.101)}, p=p)
    assert analysis.final_look
    decision = decide(analysis, p, now)
    assert decision.action is Action.STOP_INCONCLUSIVE
    assert "final planned look (4,000 units)" in decision.reason


def test_group_sequential_promotes_on_a_crossed_boundary() -> None:
    p = policy(mode="group_sequential", max_units=80_000, spending="pocock")
    analysis, p, now = look({"control": (20_000, 0.10), "candidate": (20_000, 0.13)}, p=p)
    primary = analysis.primary()[0]
    assert primary.boundary is not None and primary.information_fraction == pytest.approx(0.5)
    assert decide(analysis, p, now).action is Action.PROMOTE


def test_hold_when_the_analysis_failed() -> None:
    analysis = failed(EXPERIMENT, look=3, at=T0, error="the store is unreachable")
    decision = decide(analysis, policy(), T0)
    assert decision.action is Action.HOLD
    assert "nothing changes" in decision.reason and "unreachable" in decision.reason


def test_hold_when_confidence_sequences_stop_overlapping() -> None:
    state = MonitorStates.from_dict({
        "monitors": {
            "conversion/candidate": {
                "looks": 5, "p_value": 0.2, "ci_low": 0.05, "ci_high": 0.08, "n_total": 1000,
            }
        }
    })  # fmt: skip
    analysis, p, now = look({"control": (20_000, 0.10), "candidate": (20_000, 0.10)}, state=state)
    decision = decide(analysis, p, now)
    assert decision.action is Action.HOLD
    assert "no longer overlap" in decision.reason


def test_several_arms_promote_the_best_guaranteed_winner() -> None:
    conv = {"control": (24_000, 0.10), "b": (18_000, 0.13), "c": (18_000, 0.15)}
    analysis, p, now = look(conv, experiment=THREE_ARMS)
    primaries = analysis.primary()
    assert all(c.alpha == pytest.approx(0.025) for c in primaries)  # Bonferroni over 2 arms
    decision = decide(analysis, p, now)
    assert decision.action is Action.PROMOTE and decision.arm == "c"
    assert "chosen over b" in decision.reason


def test_ramp_advances_only_without_harm() -> None:
    p = policy(ramp=[0.05, 0.2, 1.0], ramp_step="1h", min_duration=None)
    exp = Experiment("ranker", EXPERIMENT.arms, status=ExperimentStatus.RUNNING, coverage=0.05)
    calm = {"control": (300, 100.0), "candidate": (300, 100.5)}
    analysis, _, now = look(
        {"control": (300, 0.1), "candidate": (300, 0.1)}, calm, p=p, experiment=exp, hours=2
    )
    decision = decide(analysis, p, now)
    assert decision.action is Action.RAMP and decision.coverage == 0.2
    assert "coverage 5% -> 20%" in decision.reason
    hurting = {"control": (300, 100.0), "candidate": (300, 108.0)}  # +8 %: beyond the 5 % margin
    analysis, _, now = look(
        {"control": (300, 0.1), "candidate": (300, 0.1)}, hurting, p=p, experiment=exp, hours=2
    )
    decision = decide(analysis, p, now)
    assert decision.action is Action.CONTINUE
    assert "ramp held at 5%" in decision.reason
    analysis, _, now = look(
        {"control": (300, 0.1), "candidate": (300, 0.1)}, calm, p=p, experiment=exp, hours=0.5
    )
    assert "next ramp step 20%" in decide(analysis, p, now).reason


def test_not_enough_data_is_a_reason_not_an_error() -> None:
    analysis, p, now = look({"control": (1, 0.0)}, hours=0.01)
    decision = decide(analysis, p, now)
    assert decision.action is Action.CONTINUE
    assert "not enough data yet" in decision.reason


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"primary": None}, "policy.primary", "mapping"),
        ({"primary": {"metric": "conversion"}}, "policy.primary.kind", "is required"),
        ({"primary": {"metric": "c", "kind": "binomial"}}, "policy.primary.kind", "one of"),
        (
            {"primary": {"metric": "Bad Name", "kind": "binary"}},
            "policy.primary.metric",
            "not a metric",
        ),
        (
            {"primary": {"metric": "c", "kind": "binary", "direction": "up"}},
            "policy.primary.direction",
            "increase",
        ),
        ({"alpha": 0.7}, "policy.alpha", "between 0 and 0.5"),
        ({"mode": "group_sequential", "max_units": None}, "policy.max_units", "planned total"),
        (
            {"guardrails": [{"metric": "lat", "kind": "continuous", "direction": "decrease"}]},
            "policy.guardrails[0].margin",
            "tolerated harm",
        ),
        (
            {"guardrails": [{"metric": "lat", "kind": "continuous", "margin": 1}]},
            "policy.guardrails[0].direction",
            "is required",
        ),
        (
            {
                "guardrails": [
                    {
                        "metric": "conversion",
                        "kind": "binary",
                        "direction": "increase",
                        "margin": 0.1,
                    }
                ]
            },
            "policy.guardrails",
            "appears twice",
        ),
        ({"max_duration": "soon"}, "policy.max_duration", "duration"),
        ({"min_duration": "30d", "max_duration": "7d"}, "policy.min_duration", "must not exceed"),
        ({"ramp": [0.2, 0.1]}, "policy.ramp[1]", "increase"),
        ({"ramp": [0.0, 1.0]}, "policy.ramp[0]", "(0, 1]"),
        ({"look_intervall": "5m"}, "policy.look_intervall", "did you mean 'look_interval'"),
        ({"webhook": "ftp://x"}, "policy.webhook", "http"),
        ({"spending": "linear"}, "policy.spending", "obf, pocock"),
    ],
)
def test_policy_errors_name_the_field(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        policy_from_dict({**POLICY_DOC, **change})
    assert info.value.field == field
    assert words in info.value.message


def test_policy_round_trips_through_its_document() -> None:
    p = policy(ramp=[0.1, 1.0], cuped="14d", webhook="https://hooks.example/abkit")
    assert policy_from_dict(policy_to_dict(p)) == p
    assert p.cuped_lookback_seconds == 14 * 86400
    assert p.primary.metric.cuped_lookback_seconds == 14 * 86400
