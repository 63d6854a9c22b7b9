"""The hashing contract, pinned by vectors from an independent implementation (Node.js)."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abkit.core.assignment import CompiledExperiment
from abkit.core.hashing import HASH_VERSION, below, bucket
from abkit.core.spec import experiment_from_dict

VECTORS = json.loads((Path(__file__).parents[1] / "fixtures" / "hash_vectors.json").read_text())


def test_fixture_is_large_and_covers_hard_inputs() -> None:
    units = {v["unit_id"] for v in VECTORS["buckets"]}
    seeds = {v["seed"] for v in VECTORS["buckets"]}
    assert len(VECTORS["buckets"]) >= 50
    assert "" in units and "" in seeds
    assert any(not u.isascii() for u in units)
    assert any(any(ord(ch) > 0xFFFF for ch in u) for u in units)  # emoji, astral plane
    assert any(len(u.encode()) >= 256 for u in units)
    assert VECTORS["hash_version"] == HASH_VERSION == 1


@pytest.mark.parametrize(
    "vector", VECTORS["buckets"], ids=lambda v: f"{v['seed']!r}:{v['unit_id'][:12]!r}"
)
def test_bucket_matches_golden_vector(vector: dict[str, str]) -> None:
    assert bucket(vector["seed"], vector["unit_id"]) == vector["bucket"]
    digest = hashlib.sha256(f"{vector['seed']}:{vector['unit_id']}".encode()).digest()
    assert struct.unpack(">Q", digest[:8])[0] == int(vector["uint64"])


@pytest.mark.parametrize(
    "case", VECTORS["assignments"], ids=lambda c: f"{c['experiment']}:{c['unit_id']}"
)
def test_assignment_matches_golden_vector(case: dict[str, object]) -> None:
    doc = next(e for e in VECTORS["experiments"] if e["key"] == case["experiment"])
    experiment = experiment_from_dict(doc, status="running")
    answer = CompiledExperiment(experiment).assign(case["unit_id"], case["attributes"])  # type: ignore[arg-type]
    assert (answer.arm_key, answer.model_version, answer.reason.value) == (
        case["arm_key"],
        case["model_version"],
        case["reason"],
    )


def test_bucket_is_in_unit_interval_and_stable() -> None:
    values = [bucket("seed", f"u{i}") for i in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert values == [bucket("seed", f"u{i}") for i in range(1000)]


@given(st.floats(min_value=0.0, max_value=1.0), st.binary(min_size=32, max_size=32))
def test_threshold_comparison_equals_float_comparison(bound: float, digest: bytes) -> None:
    # The hot path compares raw digests with below(bound); it must agree with bucket < bound
    # (except that a bound of 1.0 admits everyone, see hashing.py).
    value = struct.unpack(">Q", digest[:8])[0] / 2.0**64
    expected = value < bound or bound >= 1.0
    assert (digest < below(bound)) == expected


def test_threshold_is_exact_at_the_rounding_edges() -> None:
    rng = random.Random(1)
    for _ in range(200):
        bound = rng.random()
        threshold = int.from_bytes(below(bound)[:8], "big")
        # Just below the threshold the float comparison holds; at it, it no longer does.
        assert (threshold - 1) / 2.0**64 < bound
        assert threshold / 2.0**64 >= bound
    assert below(0.0) == bytes(32)
    top = b"\xff" * 32
    assert top < below(1.0)
