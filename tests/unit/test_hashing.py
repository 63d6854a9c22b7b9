"""The hashing contract, pinned by vectors from an independent implementation (Node.js); the C
digest (abkit/core/_speedups.c) and the hashlib one both keep it."""

from __future__ import annotations

import functools
import hashlib
import json
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abkit.core import assignment
from abkit.core.assignment import CompiledExperiment
from abkit.core.hashing import HASH_VERSION, NATIVE, below, bucket, seeded
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


def test_the_suite_runs_the_native_digest() -> None:
    assert NATIVE, "abkit.core._speedups is not built (pip install -e . with a C compiler)"


@pytest.mark.parametrize("native", [True, False], ids=["native", "hashlib"])
@pytest.mark.parametrize(
    "vector", VECTORS["buckets"], ids=lambda v: f"{v['seed']!r}:{v['unit_id'][:12]!r}"
)
def test_seeded_digests_match_golden_vectors(vector: dict[str, str], native: bool) -> None:
    digest = seeded(vector["seed"], native=native)(vector["unit_id"])
    assert len(digest) == 32
    assert struct.unpack(">Q", digest[:8])[0] == int(vector["uint64"])


# Seeds and units long enough to cross SHA-256's 64-byte blocks, in any script.
texts = st.one_of(st.text(max_size=10), st.text(min_size=50, max_size=200))


@given(texts, texts)
def test_the_native_digest_is_sha256_of_seed_colon_unit(seed: str, unit: str) -> None:
    expected = hashlib.sha256(f"{seed}:{unit}".encode()).digest()
    assert seeded(seed, native=True)(unit) == expected
    assert seeded(seed, native=False)(unit) == expected


@pytest.mark.parametrize("native", [True, False], ids=["native", "hashlib"])
def test_a_unit_that_is_not_utf8_is_refused_like_str_encode(native: bool) -> None:
    digest = seeded("s", native=native)
    with pytest.raises(UnicodeEncodeError):
        digest("\ud800")  # a lone surrogate
    with pytest.raises((TypeError, AttributeError)):
        digest(b"u")  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        seeded("\udfff", native=native)
    with pytest.raises((TypeError, AttributeError)):
        seeded(b"s", native=native)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "case", VECTORS["assignments"], ids=lambda c: f"{c['experiment']}:{c['unit_id']}"
)
def test_assignment_with_the_hashlib_digest_matches_golden_vector(
    case: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assignment, "seeded", functools.partial(seeded, native=False))
    test_assignment_matches_golden_vector(case)


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
