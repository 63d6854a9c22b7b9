"""The experiment model: experiments, arms (each a model version), layers, holdouts, statuses.

Values are frozen and validated on construction, so an invalid experiment cannot exist in memory:
whatever loads one (YAML file, database row, API call) gets a :class:`ValidationError` that names
the field and says how to fix it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from hashlib import sha256
from itertools import pairwise
from types import MappingProxyType
from typing import Any, NamedTuple

from abkit.core.hashing import HASH_VERSION
from abkit.core.targeting import Condition
from abkit.errors import ValidationError

KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
"""Experiment, arm, layer and holdout keys: lower case, digits, ``_ . -``, at most 64 chars."""

MODEL_VERSION_MAX_LENGTH = 128
WEIGHT_TOLERANCE = 1e-6


class ExperimentStatus(StrEnum):
    DRAFT = "draft"  # configured, not serving: every unit gets control, nothing is logged
    RUNNING = "running"  # units are randomized and exposures logged
    PAUSED = "paused"  # temporarily off: control for everyone, no exposures, resumable
    CONCLUDED = "concluded"  # decided: everyone targeted gets `rollout_arm`; final


class ModelStatus(StrEnum):
    """Where a model version stands in the registry."""

    CANDIDATE = "candidate"  # in an experiment, not serving everyone
    LIVE = "live"  # what everyone outside experiments gets; one per model
    PREVIOUS = "previous"  # the version a promotion replaced, kept at hand for a rollback
    RETIRED = "retired"  # undone by a rollback of its promotion


class Reason(StrEnum):
    """Why a unit got its arm (OpenFeature-style evaluation reasons)."""

    SPLIT = "SPLIT"  # randomized into an arm by weight: counted in the analysis
    OVERRIDE = "OVERRIDE"  # forced by the experiment's overrides (QA); not counted
    HOLDOUT = "HOLDOUT"  # in a holdout: control, not counted
    NOT_IN_LAYER = "NOT_IN_LAYER"  # the unit's layer segment belongs to another experiment
    NOT_IN_COVERAGE = "NOT_IN_COVERAGE"  # outside the share of traffic that enters the experiment
    TARGETING_MISS = "TARGETING_MISS"  # attributes do not match the targeting condition
    EXPERIMENT_NOT_RUNNING = "EXPERIMENT_NOT_RUNNING"  # draft or paused: control
    CONCLUDED = "CONCLUDED"  # a decision was taken: the rollout arm for everyone targeted
    ERROR = "ERROR"  # client side only: evaluation failed, the caller's default was returned


class Exposure(NamedTuple):
    """A unit was randomized into an arm, when and under which trace: one row of ``exposures``.

    A named tuple rather than a frozen dataclass on purpose: rows are built by the thousand when
    the journal is decoded for a store, they are immutable either way, and a tuple is already
    the row shape an insert takes.
    """

    experiment_key: str
    unit_id: str
    arm_key: str
    model_version: str
    config_checksum: str
    exposed_at: datetime
    trace_id: str = ""
    span_id: str = ""


class Event(NamedTuple):
    """A business KPI event: one row of ``events``.

    ``event_id`` is unique: writing the same event twice (a client retry, a spool replay) stores
    it once. A named tuple for the same reason as :class:`Exposure`.
    """

    event_id: str
    unit_id: str
    metric: str
    value: float
    occurred_at: datetime
    trace_id: str = ""
    span_id: str = ""


def check_key(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not KEY_PATTERN.match(value):
        raise ValidationError(
            field_name,
            f"{value!r} is not a valid key: use 1-64 characters of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit",
        )
    return value


def _check_fraction(value: object, field_name: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field_name, f"must be a number between 0 and 1, got {value!r}")
    number = float(value)
    low_ok = number >= 0.0 if allow_zero else number > 0.0
    if not (math.isfinite(number) and low_ok and number <= 1.0):
        bound = "0 <= x <= 1" if allow_zero else "0 < x <= 1"
        raise ValidationError(field_name, f"must satisfy {bound}, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm of an experiment: the model version a caller routes to, and its traffic share."""

    key: str
    model_version: str
    weight: float
    control: bool = False

    def __post_init__(self) -> None:
        check_key(self.key, "key")
        if not isinstance(self.model_version, str) or not (
            0 < len(self.model_version) <= MODEL_VERSION_MAX_LENGTH
        ):
            raise ValidationError(
                "model_version",
                f"must be a non-empty string of at most {MODEL_VERSION_MAX_LENGTH} characters",
            )
        object.__setattr__(self, "weight", _check_fraction(self.weight, "weight", allow_zero=False))


@dataclass(frozen=True, slots=True)
class LayerSegment:
    """The experiment owns ``[start, end)`` of a layer's bucket space (mutual exclusion)."""

    layer: str
    start: float
    end: float

    def __post_init__(self) -> None:
        check_key(self.layer, "layer.key")
        start = _check_fraction(self.start, "layer.start", allow_zero=True)
        end = _check_fraction(self.end, "layer.end", allow_zero=True)
        if not start < end:
            raise ValidationError("layer.end", f"must be greater than start ({start}), got {end}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    def overlaps(self, other: LayerSegment) -> bool:
        return self.layer == other.layer and self.start < other.end and other.start < self.end


@dataclass(frozen=True, slots=True)
class Holdout:
    """A share of units kept out of every experiment that names this holdout (they get control)."""

    key: str
    fraction: float

    def __post_init__(self) -> None:
        check_key(self.key, "holdout.key")
        object.__setattr__(
            self, "fraction", _check_fraction(self.fraction, "holdout.fraction", allow_zero=True)
        )


@dataclass(frozen=True, slots=True)
class Experiment:
    """An experiment comparing model versions. Validated on construction.

    ``salt`` and ``model`` default to the key. ``rollout_arm`` is set only by a decision
    (promote, rollback, stop): a concluded experiment serves that arm to every targeted unit.
    """

    key: str
    arms: tuple[Arm, ...]
    model: str = ""
    status: ExperimentStatus = ExperimentStatus.DRAFT
    salt: str = ""
    hash_version: int = HASH_VERSION
    coverage: float = 1.0
    layer: LayerSegment | None = None
    holdout: Holdout | None = None
    targeting: Condition | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    rollout_arm: str | None = None
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        check_key(self.key, "key")
        if not self.model:
            # An experiment compares versions of one model; by default the model is named after
            # the experiment, so the registry always knows which version is live.
            object.__setattr__(self, "model", self.key)
        check_key(self.model, "model")
        if not self.salt:
            object.__setattr__(self, "salt", self.key)
        elif not isinstance(self.salt, str) or len(self.salt) > 128:
            raise ValidationError("salt", "must be a string of at most 128 characters")
        if self.hash_version != HASH_VERSION:
            raise ValidationError(
                "hash_version", f"only hash version {HASH_VERSION} exists, got {self.hash_version}"
            )
        object.__setattr__(self, "status", ExperimentStatus(self.status))
        object.__setattr__(
            self, "coverage", _check_fraction(self.coverage, "coverage", allow_zero=True)
        )
        arms = tuple(self.arms)
        object.__setattr__(self, "arms", arms)
        _validate_arms(arms)
        keys = {a.key for a in arms}
        overrides = dict(self.overrides)
        for unit, arm in overrides.items():
            if arm not in keys:
                raise ValidationError(
                    f"overrides[{unit!r}]",
                    f"names arm {arm!r}, which is not one of {sorted(keys)}",
                )
        object.__setattr__(self, "overrides", MappingProxyType(overrides))
        if self.rollout_arm is not None and self.rollout_arm not in keys:
            raise ValidationError(
                "rollout_arm", f"{self.rollout_arm!r} is not one of the arms {sorted(keys)}"
            )
        if (self.status is ExperimentStatus.CONCLUDED) != (self.rollout_arm is not None):
            raise ValidationError("rollout_arm", "is set exactly when the experiment is concluded")

    @property
    def control(self) -> Arm:
        return next(a for a in self.arms if a.control)

    @property
    def treatments(self) -> tuple[Arm, ...]:
        return tuple(a for a in self.arms if not a.control)

    def arm(self, key: str) -> Arm:
        for a in self.arms:
            if a.key == key:
                return a
        raise ValidationError("arm", f"{key!r} is not one of {[a.key for a in self.arms]}")

    @property
    def config_checksum(self) -> str:
        """Fingerprint of everything that decides which randomized unit gets which arm."""
        return config_checksum(self)


def _validate_arms(arms: tuple[Arm, ...]) -> None:
    if len(arms) < 2:
        raise ValidationError("arms", f"an experiment needs at least 2 arms, got {len(arms)}")
    seen: set[str] = set()
    for i, arm in enumerate(arms):
        if not isinstance(arm, Arm):
            raise ValidationError(f"arms[{i}]", "must be an Arm")
        if arm.key in seen:
            raise ValidationError(f"arms[{i}].key", f"duplicate arm key {arm.key!r}")
        seen.add(arm.key)
    controls = [a.key for a in arms if a.control]
    if len(controls) != 1:
        raise ValidationError(
            "arms",
            f"exactly one arm must be the control (control: true), found {len(controls)}"
            + (f": {controls}" if controls else ""),
        )
    total = math.fsum(a.weight for a in arms)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValidationError(
            "arms",
            f"weights must sum to 1, they sum to {total:.6g} "
            f"({', '.join(f'{a.key}={a.weight:g}' for a in arms)})",
        )


def config_checksum(experiment: Experiment) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of the assignment-relevant config.

    Status, rollout, overrides and descriptions are excluded: they never change the arm of a
    randomized unit. Coverage is included, so exposures logged at each ramp step are told apart.
    """
    doc = _assignment_doc(experiment)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256(canonical.encode()).hexdigest()[:16]


def _assignment_doc(experiment: Experiment) -> dict[str, Any]:
    """The assignment-relevant config of :func:`config_checksum`, as a JSON-ready mapping."""
    return {
        "hash_version": experiment.hash_version,
        "salt": experiment.salt,
        "arms": [[a.key, a.model_version, a.weight, a.control] for a in experiment.arms],
        "coverage": experiment.coverage,
        "layer": None
        if experiment.layer is None
        else [experiment.layer.layer, experiment.layer.start, experiment.layer.end],
        "holdout": None
        if experiment.holdout is None
        else [experiment.holdout.key, experiment.holdout.fraction],
        "targeting": None if experiment.targeting is None else experiment.targeting.to_dict(),
    }


def catalog_checksum(experiments: Iterable[Experiment]) -> str:
    """SHA-256 (64 hex digits) of everything that decides any answer of these experiments.

    Unlike :func:`config_checksum` it covers status, rollout arm, overrides and model: a client
    that assigns locally (``abkit.client.LocalClient``) holds the config this names, and two
    configs with one checksum answer every unit alike. Order-independent (sorted by key).
    """
    docs = []
    for e in sorted(experiments, key=lambda e: e.key):
        docs.append(
            {
                "key": e.key,
                "status": e.status.value,
                "model": e.model,
                "rollout_arm": e.rollout_arm,
                "overrides": dict(e.overrides),
                "checksum": config_checksum(e),
                "config": _assignment_doc(e),
            }
        )
    canonical = json.dumps(docs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256(canonical.encode()).hexdigest()


def validate_catalog(experiments: Iterable[Experiment]) -> None:
    """Checks that span experiments: unique keys, disjoint layer segments, consistent holdouts."""
    seen: dict[str, Experiment] = {}
    holdouts: dict[str, Holdout] = {}
    by_layer: dict[str, list[tuple[LayerSegment, Experiment]]] = {}
    for exp in experiments:
        if exp.key in seen:
            raise ValidationError("key", f"experiment key {exp.key!r} is used twice")
        seen[exp.key] = exp
        if exp.holdout is not None:
            known = holdouts.setdefault(exp.holdout.key, exp.holdout)
            if known != exp.holdout:
                raise ValidationError(
                    "holdout.fraction",
                    f"holdout {exp.holdout.key!r} has fraction {known.fraction} in one experiment "
                    f"and {exp.holdout.fraction} in {exp.key!r}; a holdout has one fraction",
                )
        # Concluded experiments no longer randomize; their segment is free for a successor.
        if exp.layer is not None and exp.status is not ExperimentStatus.CONCLUDED:
            by_layer.setdefault(exp.layer.layer, []).append((exp.layer, exp))
    for layer, members in by_layer.items():
        # Sorted by start, two segments overlap only if some adjacent pair does.
        members.sort(key=lambda m: (m[0].start, m[1].key))
        for (seg_a, exp_a), (seg_b, exp_b) in pairwise(members):
            if seg_a.overlaps(seg_b):
                raise ValidationError(
                    "layer",
                    f"experiments {exp_a.key!r} [{seg_a.start}, {seg_a.end}) and "
                    f"{exp_b.key!r} [{seg_b.start}, {seg_b.end}) overlap in layer {layer!r}; "
                    "give each experiment a disjoint start/end range",
                )
