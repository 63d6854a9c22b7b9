"""Helpers for tests that run the ``abkit`` command against a real store while a decision
service in the test records real looks: the demo's experiment and simulated users, written
straight into the store (no gRPC: a look is seconds of traffic, not a minute of the demo)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from abkit.core.model import Event, Exposure
from abkit.ports import Store
from abkit.services.decisions import DecisionService, LookOutcome
from abkit.services.experiments import ExperimentService
from abkit.specfile import ExperimentFile, parse_document
from abkit.tools.demo import DEMO_EXPERIMENT, EXPERIMENT_KEY, SCENARIOS

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def cli_env(url: str, **extra: str) -> dict[str, str]:
    """The environment of an ``abkit`` subprocess on ``url`` (with ``abkit`` on the PATH)."""
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {
        **os.environ,
        "ABKIT_DATABASE_URL": url,
        "ABKIT_ACTOR": "tester",
        "PATH": path,
        **extra,
    }


def abkit(
    *args: str, url: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "abkit", *args],
        capture_output=True,
        text=True,
        env=cli_env(url),
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"abkit {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


class Clock:
    """A clock the test moves: looks happen in seconds of test time, a 30 s maximum duration
    passes at once."""

    def __init__(self) -> None:
        self.value = datetime.now(UTC)

    def now(self) -> datetime:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += timedelta(seconds=seconds)


@dataclass
class DemoExperiment:
    """The demo's experiment in a store, its users and the looks of a decision service."""

    store: Store
    scenario: str
    clock: Clock
    key: str = EXPERIMENT_KEY
    users: int = 0

    def text(self) -> str:
        """The demo's experiment file, under this key."""
        return DEMO_EXPERIMENT.replace(f"key: {EXPERIMENT_KEY}", f"key: {self.key}", 1)

    def spec(self) -> ExperimentFile:
        return parse_document(self.text(), f"{self.key}.yaml")

    @property
    def experiments(self) -> ExperimentService:
        return ExperimentService(self.store, self.clock)

    @property
    def decisions(self) -> DecisionService:
        return DecisionService(self.store, self.clock)

    def apply(self, *, start: bool = True) -> None:
        spec = self.spec()
        self.experiments.apply(spec.experiment, actor="tester", policy=spec.policy, start=start)

    def visit(self, count: int, seed: int = 7) -> None:
        """``count`` more simulated users of the scenario (the demo's rates per model
        version), exposed now, with their latency and maybe a conversion just after."""
        chosen = SCENARIOS[self.scenario]
        experiment = self.spec().experiment
        at = self.clock.now()
        exposures, events = [], []
        for i in range(self.users, self.users + count):
            rng = random.Random(f"{seed}:{i}")
            arm = experiment.arms[i % 2]
            version = arm.model_version
            unit = f"user-{i:06d}"
            exposures.append(
                Exposure(self.key, unit, arm.key, version, experiment.config_checksum, at)
            )
            after = at + timedelta(milliseconds=10)
            latency = max(1.0, rng.gauss(chosen.latency_ms[version], 25.0))
            events.append(Event(f"l{i}", unit, "latency_ms", latency, after))
            if rng.random() < chosen.conversion[version]:
                events.append(Event(f"c{i}", unit, "conversion", 1.0, after))
        with self.store.transaction() as tx:
            tx.exposures.add(exposures)
            tx.events.add(events)
        self.users += count

    def look(self, users: int = 2000, seconds: float = 1.0) -> LookOutcome:
        """More users, ``seconds`` later a look; the look's outcome."""
        if users:
            self.visit(users)
        self.clock.advance(seconds)
        outcome = self.decisions.look(self.key)
        assert outcome is not None, "the look was not taken"
        return outcome

    def run_to_decision(self, max_looks: int = 20) -> list[LookOutcome]:
        """Looks until a terminal decision (the ``aa`` scenario waits out its 30 s maximum
        duration after two looks); every outcome, in order."""
        outcomes = []
        for n in range(max_looks):
            if self.scenario == "aa" and n == 2:
                outcomes.append(self.look(users=0, seconds=31))
            else:
                outcomes.append(self.look())
            if outcomes[-1].decision.action.terminal:
                return outcomes
        raise AssertionError(f"no decision in {max_looks} looks: {outcomes[-1].decision}")


def demo_experiment(store: Store, scenario: str) -> DemoExperiment:
    demo = DemoExperiment(store, scenario, Clock())
    demo.apply()
    return demo


__all__ = ["EXPERIMENT_KEY", "ROOT", "Clock", "DemoExperiment", "abkit", "cli_env"]
