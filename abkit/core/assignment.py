"""Deterministic assignment of a unit to an arm of each experiment.

Order of checks for one experiment, and why:

1. **status** -- draft and paused experiments serve control and log nothing; a concluded one
   serves its ``rollout_arm`` to every targeted unit (layer and coverage no longer matter: the
   decision applies to the whole tested population).
2. **override** -- forced arms for named units (QA, demos). Checked before layer, coverage and
   targeting so that a QA account always sees what it was promised; an override is not
   randomized, so it is never logged as an exposure and never enters the analysis.
3. **holdout** -- units in the experiment's holdout get control and are not counted.
4. **layer** -- the unit's layer bucket must fall in the experiment's segment (mutual exclusion).
5. **coverage** -- the unit's coverage bucket must be below ``coverage``.
6. **targeting** -- the request attributes must satisfy the condition.
7. **split** -- the arm bucket picks an arm by cumulative weight. Only this path counts: its
   assignment has ``in_experiment`` true and is the one a caller logs as an :class:`Exposure`.

Each question uses its own seed (see :mod:`abkit.core.hashing`), so they are independent.

Performance: the hot path allocates nothing but its digests (32 bytes each, from the seeded digest
functions of :mod:`abkit.core.hashing`). Every possible answer of an experiment (one per arm
and reason) is built once at compile time and shared, and buckets are compared as raw digests
against precomputed thresholds (:func:`abkit.core.hashing.below`). The exposure row -- which needs
the request's time and trace anyway -- is built by the caller with :meth:`Assignment.exposure`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate

from abkit.core.hashing import Digest, below, coverage_seed, holdout_seed, layer_seed, seeded
from abkit.core.model import Experiment, ExperimentStatus, Exposure, Reason, validate_catalog
from abkit.core.rows import exposure_head
from abkit.core.targeting import Attributes, compile_condition
from abkit.errors import NotFoundError

_NO_ATTRIBUTES: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class Assignment:
    """The answer for one unit and one experiment: route on ``model_version``."""

    experiment_key: str
    arm_key: str
    model_version: str
    reason: Reason
    config_checksum: str = ""
    in_experiment: bool = field(init=False, compare=False)
    """True when the unit was randomized (reason SPLIT): only these are logged and analysed.
    A field, not a property: it is read for every answer on the hot path."""

    row_head: str = field(init=False, compare=False, repr=False)
    """The part of its exposure rows this answer fixes, encoded (:func:`abkit.core.rows.
    exposure_head`): a row is then this, the request's time and trace, and the unit."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_experiment", self.reason is Reason.SPLIT)
        object.__setattr__(
            self,
            "row_head",
            exposure_head(
                self.experiment_key, self.arm_key, self.model_version, self.config_checksum
            ),
        )

    def exposure(
        self, unit_id: str, exposed_at: datetime, trace_id: str = "", span_id: str = ""
    ) -> Exposure:
        """The exposure row of this assignment (only meaningful when ``in_experiment``)."""
        return Exposure(
            self.experiment_key,
            unit_id,
            self.arm_key,
            self.model_version,
            self.config_checksum,
            exposed_at,
            trace_id,
            span_id,
        )


class CompiledExperiment:
    """An :class:`Experiment` with seeds encoded, thresholds computed and answers prebuilt.

    ``assign(unit_id, attributes)`` is a closure built once per experiment: every constant it
    needs is a local of the closure rather than an attribute looked up on each call.
    """

    __slots__ = ("assign", "checksum", "control", "experiment", "key", "plain")

    assign: Callable[[str, Attributes], Assignment]
    plain: PlainPlan
    """The same answers for units without attributes, as constants (:mod:`abkit.core.plain`)."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.key = key = experiment.key
        self.checksum = checksum = experiment.config_checksum
        control = experiment.control
        miss = {
            reason: Assignment(key, control.key, control.model_version, reason) for reason in Reason
        }
        self.control = miss[Reason.EXPERIMENT_NOT_RUNNING]
        split = tuple(
            Assignment(key, a.key, a.model_version, Reason.SPLIT, checksum) for a in experiment.arms
        )
        # Arm i owns buckets in [cum[i-1], cum[i]); the last boundary admits everything.
        cumulative = list(accumulate(a.weight for a in experiment.arms))
        by_key = {a.key: a for a in experiment.arms}
        rollout = None
        if experiment.rollout_arm is not None:
            arm = by_key[experiment.rollout_arm]
            rollout = Assignment(key, arm.key, arm.model_version, Reason.CONCLUDED)
        layer, holdout = experiment.layer, experiment.holdout
        held = holdout if holdout is not None and holdout.fraction > 0 else None
        covered = experiment.coverage >= 1.0
        constants = _Constants(
            not_running=experiment.status in (ExperimentStatus.DRAFT, ExperimentStatus.PAUSED),
            control=self.control,
            rollout=rollout,
            overrides={
                unit: Assignment(key, arm, by_key[arm].model_version, Reason.OVERRIDE)
                for unit, arm in experiment.overrides.items()
            },
            holdout=None if held is None else below(held.fraction),
            holdout_digest=None if held is None else seeded(holdout_seed(held.key)),
            layer_digest=None if layer is None else seeded(layer_seed(layer.layer)),
            layer_start=b"" if layer is None else below(layer.start),
            layer_end=b"" if layer is None else below(layer.end),
            coverage=None if covered else below(experiment.coverage),
            coverage_digest=None if covered else seeded(coverage_seed(experiment.salt)),
            targeting=compile_condition(experiment.targeting),
            arm_digest=seeded(experiment.salt),
            thresholds=tuple(below(c) for c in cumulative[:-1]),
            split=split,
            miss=miss,
        )
        self.assign = _assign_function(constants)
        self.plain = _plain_plan(constants)


@dataclass(frozen=True, slots=True)
class _Constants:
    """What an experiment's answers depend on besides the unit, computed once per experiment."""

    not_running: bool
    control: Assignment
    rollout: Assignment | None
    overrides: dict[str, Assignment]
    holdout: bytes | None
    holdout_digest: Digest | None
    layer_digest: Digest | None
    layer_start: bytes
    layer_end: bytes
    coverage: bytes | None
    coverage_digest: Digest | None
    targeting: Callable[[Attributes], bool] | None
    arm_digest: Digest
    thresholds: tuple[bytes, ...]
    split: tuple[Assignment, ...]
    miss: dict[Reason, Assignment]


PlainPlan = tuple[
    Assignment | None,
    dict[str, Assignment] | None,
    tuple[tuple[Digest, bytes, bytes | None, Assignment], ...],
    Assignment | None,
    Digest,
    tuple[bytes, ...],
    tuple[Assignment, ...],
    tuple[str, ...],
]
"""``(constant, overrides, gates, after_gates, arm_digest, thresholds, split, heads)``: see
:func:`_plain_plan`."""


def _plain_plan(c: _Constants) -> PlainPlan:
    """The answers of :func:`_assign_function` for a unit without attributes, as data that
    :func:`abkit.core.plain.assign_plain` walks without calling back into Python.

    Without attributes, targeting gives the same result for every unit, so every step but the
    override and the digests is a constant: ``constant`` answers every unit (draft or paused:
    control; concluded: the rollout arm, or the targeting miss); ``gates`` are holdout, layer and
    coverage in that order, each ``(digest, low, high, miss)``: a unit passes when
    ``low <= digest`` and, when ``high`` is given, ``digest < high``; ``after_gates`` answers a
    unit past them when targeting fails; else the split, with each arm's exposure row head.
    """
    targeted = c.targeting is None or c.targeting(_NO_ATTRIBUTES)
    constant = None
    if c.not_running:
        constant = c.control
    elif c.rollout is not None:
        constant = c.rollout if targeted else c.miss[Reason.TARGETING_MISS]
    gates: list[tuple[Digest, bytes, bytes | None, Assignment]] = []
    if c.holdout_digest is not None and c.holdout is not None:
        gates.append((c.holdout_digest, c.holdout, None, c.miss[Reason.HOLDOUT]))
    if c.layer_digest is not None:
        gates.append((c.layer_digest, c.layer_start, c.layer_end, c.miss[Reason.NOT_IN_LAYER]))
    if c.coverage_digest is not None:
        gates.append((c.coverage_digest, b"", c.coverage, c.miss[Reason.NOT_IN_COVERAGE]))
    return (
        constant,
        c.overrides or None,
        tuple(gates),
        None if targeted else c.miss[Reason.TARGETING_MISS],
        c.arm_digest,
        c.thresholds,
        c.split,
        tuple(a.row_head for a in c.split),
    )


def _assign_function(c: _Constants) -> Callable[[str, Attributes], Assignment]:
    not_running, control, rollout, overrides = c.not_running, c.control, c.rollout, c.overrides
    holdout, holdout_digest = c.holdout, c.holdout_digest
    layer_digest, layer_start, layer_end = c.layer_digest, c.layer_start, c.layer_end
    coverage, coverage_digest, targeting = c.coverage, c.coverage_digest, c.targeting
    arm_digest, thresholds, split, miss = c.arm_digest, c.thresholds, c.split, c.miss
    holdout_miss = miss[Reason.HOLDOUT]
    layer_miss = miss[Reason.NOT_IN_LAYER]
    coverage_miss = miss[Reason.NOT_IN_COVERAGE]
    targeting_miss = miss[Reason.TARGETING_MISS]
    # Each question's digest comes from its seed's digest function (hashing.seeded).

    def assign(unit_id: str, attributes: Attributes = _NO_ATTRIBUTES) -> Assignment:
        if not_running:
            return control
        if rollout is not None:
            if targeting is not None and not targeting(attributes):
                return targeting_miss
            return rollout
        if overrides:
            override = overrides.get(unit_id)
            if override is not None:
                return override
        if holdout_digest is not None and holdout_digest(unit_id) < holdout:  # type: ignore[operator]
            return holdout_miss
        if layer_digest is not None:
            digest = layer_digest(unit_id)
            if digest < layer_start or digest >= layer_end:
                return layer_miss
        if coverage_digest is not None and coverage_digest(unit_id) >= coverage:  # type: ignore[operator]
            return coverage_miss
        if targeting is not None and not targeting(attributes):
            return targeting_miss
        return split[bisect_right(thresholds, arm_digest(unit_id))]

    return assign


def assign(
    experiment: Experiment | CompiledExperiment,
    unit_id: str,
    attributes: Attributes | None = None,
) -> Assignment:
    """Assign one unit to an arm of one experiment (compiles the experiment if needed)."""
    compiled = (
        experiment if isinstance(experiment, CompiledExperiment) else CompiledExperiment(experiment)
    )
    return compiled.assign(unit_id, _NO_ATTRIBUTES if attributes is None else attributes)


class Catalog:
    """Every experiment a server answers for, validated together and compiled once."""

    __slots__ = ("_by_key", "_ordered", "experiments")

    def __init__(self, experiments: Iterable[Experiment] = ()) -> None:
        items = tuple(experiments)
        validate_catalog(items)
        self.experiments: tuple[Experiment, ...] = items
        self._ordered = tuple(CompiledExperiment(e) for e in items)
        self._by_key = {c.key: c for c in self._ordered}

    def __len__(self) -> int:
        return len(self._ordered)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, key: str) -> CompiledExperiment:
        try:
            return self._by_key[key]
        except KeyError:
            raise NotFoundError(
                f"experiment {key!r} is not known to this server; "
                "check the key or apply the experiment first"
            ) from None

    def resolve(self, keys: Sequence[str] = ()) -> tuple[CompiledExperiment, ...]:
        """The compiled experiments for ``keys`` (all of them when empty), in request order."""
        if not keys:
            return self._ordered
        return tuple(self.get(k) for k in keys)

    def assign(
        self,
        unit_id: str,
        attributes: Attributes = _NO_ATTRIBUTES,
        keys: Sequence[str] = (),
    ) -> list[Assignment]:
        """One assignment per requested experiment (all when ``keys`` is empty).

        Unknown keys raise :class:`NotFoundError` before anything is assigned.
        """
        return [c.assign(unit_id, attributes) for c in self.resolve(keys)]
