"""Benchmark: in-process assignment, abkit against GrowthBook's Python SDK and PlanOut.

The same question for each: one running experiment with coverage 90 % and a targeting condition
(``country in [US, CA, GB] and app_version >= 120``), and the same over 50 running experiments;
each library answers it for the same 20,000 distinct users (2,000 with 50 experiments). The
libraries run **interleaved**: in each of 11 rounds, one pass of abkit, then one pass of
GrowthBook and one of PlanOut (in a separate process: they live in another virtualenv), over
the same users -- equal work, the same minutes of this shared machine. Reported: the median
time per experiment-assignment of each, and the median of the per-round ratios.
GrowthBook (``growthbook``) and PlanOut (``planout``) live in a separate virtualenv,
``.bench-venv`` (never runtime dependencies): ``make bench`` creates it.

    .venv/bin/python tests/benchmarks/bench_peers.py

PlanOut 0.6.0 (its last release) imports ``collections.MutableMapping``, gone since Python 3.10;
the benchmark aliases it to ``collections.abc.MutableMapping`` before importing PlanOut.
PlanOut has no coverage or targeting operators, so its experiment is a ``BernoulliFilter`` for
coverage, a Python ``if`` for targeting and a ``UniformChoice`` for the arm -- the idiomatic way
to ask it the same question.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[2]
BENCH_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
USERS = 20_000
ROUNDS = 11
GOAL_US = 2.5
GOAL_RATIO = 10.0


def experiment_doc(i: int) -> dict[str, object]:
    """Experiment ``exp-{i}``: coverage 90 %, the targeting condition, two arms -- the question
    every peer is asked (``bench_local_client`` asks ``LocalClient`` the same)."""
    return {
        "key": f"exp-{i}",
        "coverage": 0.9,
        "targeting": {
            "all": [
                {"attr": "country", "in": ["US", "CA", "GB"]},
                {"attr": "app_version", "gte": 120},
            ]
        },
        "arms": [
            {"key": "control", "model_version": "v1", "weight": 0.5, "control": True},
            {"key": "treatment", "model_version": "v2", "weight": 0.5},
        ],
    }


def abkit_pass(experiments: int, users: int):  # type: ignore[no-untyped-def]
    """A function that runs one pass of abkit over ``users`` users; returns µs per
    experiment-assignment."""
    from abkit.core.assignment import Catalog
    from abkit.core.spec import experiment_from_dict

    docs = [experiment_doc(i) for i in range(experiments)]
    catalog = Catalog(experiment_from_dict(d, status="running") for d in docs)
    ids = [f"user-{i:08d}" for i in range(users)]
    attrs = {"country": "US", "app_version": 130}
    assign = catalog.assign

    def one() -> float:
        started = time.perf_counter()
        for unit in ids:
            assign(unit, attrs)
        return (time.perf_counter() - started) / (users * experiments) * 1e6

    return one


PEER_SCRIPT = r"""
import json, statistics, sys, time
experiments, users = int(sys.argv[1]), int(sys.argv[2])
ids = [f"user-{i:08d}" for i in range(users)]
out = {}
from growthbook import GrowthBook, Experiment
exps = [Experiment(key=f"exp-{i}", variations=["v1", "v2"], coverage=0.9, weights=[0.5, 0.5],
                   condition={"country": {"$in": ["US", "CA", "GB"]}, "app_version": {"$gte": 120}})
        for i in range(experiments)]
gb = GrowthBook(attributes={})
started = time.perf_counter()
for unit in ids:
    gb.set_attributes({"id": unit, "country": "US", "app_version": 130})
    for e in exps:
        gb.run(e)
out["growthbook"] = (time.perf_counter() - started) / (users * experiments) * 1e6
import collections, collections.abc
collections.MutableMapping = collections.abc.MutableMapping  # PlanOut 0.6.0 predates Python 3.10
from planout.experiment import SimpleExperiment
from planout.ops.random import BernoulliFilter, UniformChoice
class Exp(SimpleExperiment):
    def assign(self, params, userid, country, app_version):
        if country in ("US", "CA", "GB") and app_version >= 120:
            params.cohort = BernoulliFilter(p=0.9, choices=[userid], unit=userid)
            if params.cohort:
                params.arm = UniformChoice(choices=["v1", "v2"], unit=userid)
    def configure_logger(self):  # PlanOut would open a log file per experiment
        pass
    def log(self, data):
        pass
classes = [type(f"Exp{i}", (Exp,), {"name": f"exp-{i}"}) for i in range(experiments)]
started = time.perf_counter()
for unit in ids:
    for cls in classes:
        cls(userid=unit, country="US", app_version=130).get("arm")
out["planout"] = (time.perf_counter() - started) / (users * experiments) * 1e6
print(json.dumps(out))
"""


def peers_pass(experiments: int, users: int) -> dict[str, float]:
    if not BENCH_PYTHON.exists():
        raise SystemExit(
            "the peers live in .bench-venv: `make bench-tools` creates it "
            "(growthbook==4.0.0 planout==0.6.0 six==1.17.0)"
        )
    done = subprocess.run(
        [str(BENCH_PYTHON), "-c", PEER_SCRIPT, str(experiments), str(users)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    for experiments in (1, 50):
        users = USERS // 10 if experiments > 1 else USERS
        ours_pass = abkit_pass(experiments, users)
        ours_pass()  # warm-up, not timed
        ours: list[float] = []
        peers: dict[str, list[float]] = {"growthbook": [], "planout": []}
        for _ in range(ROUNDS):
            ours.append(ours_pass())
            for name, us in peers_pass(experiments, users).items():
                peers[name].append(us)
        ratios = {
            name: statistics.median(p / o for p, o in zip(times, ours, strict=True))
            for name, times in peers.items()
        }
        abkit_us = statistics.median(ours)
        result = {
            "benchmark": "assign_in_process_vs_peers",
            "experiments": experiments,
            "users": users,
            "rounds": ROUNDS,
            "abkit_us": round(abkit_us, 3),
            **{f"{k}_us": round(statistics.median(v), 3) for k, v in peers.items()},
            "growthbook_ratio": round(ratios["growthbook"], 1),
            "planout_ratio": round(ratios["planout"], 1),
            "raw_us": {"abkit": ours, **peers},
        }
        print(json.dumps(result))
        verdict = (
            "meets"
            if abkit_us <= GOAL_US and result["growthbook_ratio"] >= GOAL_RATIO
            else "MISSES"
        )
        print(
            f"{experiments} experiment(s): abkit {abkit_us:.2f} us per experiment-assignment, "
            f"GrowthBook {result['growthbook_us']:.1f} us ({result['growthbook_ratio']}x), "
            f"PlanOut {result['planout_us']:.1f} us ({result['planout_ratio']}x); goal <= "
            f"{GOAL_US} us and >= {GOAL_RATIO}x GrowthBook -> {verdict}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
