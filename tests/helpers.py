"""Helpers shared by tests: a settable clock, an experiment with a policy, simulated traffic."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from abkit.core.model import Event, Exposure
from abkit.core.policy_document import policy_from_dict
from abkit.core.spec import experiment_from_dict
from abkit.ports import Store
from abkit.services.experiments import ExperimentService

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
EXPERIMENT = {
    "key": "ranker-v2",
    "model": "ranker",
    "arms": [
        {"key": "control", "model_version": "ranker-v1", "weight": 0.5, "control": True},
        {"key": "candidate", "model_version": "ranker-v2", "weight": 0.5},
    ],
}
POLICY: dict[str, Any] = {
    "primary": {"metric": "conversion", "kind": "binary", "minimum_effect": 0.01},
    "guardrails": [
        {"metric": "latency_ms", "kind": "continuous", "direction": "decrease", "margin": 0.05,
         "relative": True},
    ],
    "min_units_per_arm": 200,
    "max_duration": "7d",
    "look_interval": "1m",
}  # fmt: skip


class Clock:
    def __init__(self, now: datetime) -> None:
        self.value = now

    def now(self) -> datetime:
        return self.value


def setup(store: Store, clock: Clock, policy: dict[str, Any] | None = None) -> None:
    service = ExperimentService(store, clock)
    parsed = policy_from_dict(policy or POLICY)
    service.apply(experiment_from_dict(EXPERIMENT), actor="ada", policy=parsed, start=True)


def traffic(
    store: Store,
    *,
    units: int,
    lift: float,
    latency_harm: float = 0.0,
    seed: int = 1,
    start: int = 0,
) -> None:
    """Exposures split 50/50 and conversion/latency events, written through the repositories."""
    rng = random.Random(seed)
    exposures, events = [], []
    for i in range(start, start + units):
        arm = "candidate" if i % 2 else "control"
        unit = f"user-{i}"
        at = T0 + timedelta(seconds=i % 600)
        exposures.append(Exposure("ranker-v2", unit, arm, f"ranker-{arm}", "c" * 16, at))
        rate = 0.10 + (lift if arm == "candidate" else 0.0)
        if rng.random() < rate:
            events.append(Event(f"c{i}", unit, "conversion", 1.0, at + timedelta(seconds=5)))
        mean = 100.0 * (1 + (latency_harm if arm == "candidate" else 0.0))
        events.append(
            Event(f"l{i}", unit, "latency_ms", rng.gauss(mean, 20.0), at + timedelta(seconds=1))
        )
    with store.transaction() as tx:
        tx.exposures.add(exposures)
        tx.events.add(events)
