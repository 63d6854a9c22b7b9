"""Experiments as plain documents: the shape of an experiment file and of stored config.

``experiment_from_dict`` turns a mapping (parsed from YAML or JSON) into a validated
:class:`~abkit.core.model.Experiment`; every problem raises :class:`ValidationError` whose field is
the path in the document (``arms[1].weight``) and whose message says how to fix it. Unknown fields
are refused with a suggestion, because a typo silently ignored (``coverge: 0.1``) is an experiment
run wrongly. ``experiment_to_dict`` is the exact inverse.

Example::

    key: ranker-v2
    name: Ranker v2 against v1
    model: ranker
    coverage: 0.5                 # share of traffic that enters (raise it to ramp up)
    layer: {key: ranking, start: 0.0, end: 0.5}
    holdout: {key: global, fraction: 0.05}
    targeting: {attr: country, in: [US, CA]}
    overrides: {qa-user-1: treatment}
    arms:
      - {key: control, model_version: ranker-v1, weight: 0.5, control: true}
      - {key: treatment, model_version: ranker-v2, weight: 0.5}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from abkit.core.documents import check_fields, mapping, string
from abkit.core.model import Arm, Experiment, ExperimentStatus, Holdout, LayerSegment
from abkit.core.targeting import parse_condition
from abkit.errors import ValidationError

EXPERIMENT_FIELDS = (
    "key",
    "name",
    "description",
    "model",
    "salt",
    "hash_version",
    "coverage",
    "layer",
    "holdout",
    "targeting",
    "overrides",
    "arms",
)
ARM_FIELDS = ("key", "model_version", "weight", "control")
LAYER_FIELDS = ("key", "start", "end")
HOLDOUT_FIELDS = ("key", "fraction")


def _reraise(prefix: str, exc: ValidationError) -> ValidationError:
    field = f"{prefix}.{exc.field}" if exc.field else prefix
    return ValidationError(field, exc.message)


def experiment_from_dict(
    doc: object,
    *,
    status: ExperimentStatus = ExperimentStatus.DRAFT,
    rollout_arm: str | None = None,
    extra_fields: Sequence[str] = (),
) -> Experiment:
    """Validate an experiment document.

    ``status`` and ``rollout_arm`` come from the store, never from a file.
    """
    d = mapping(doc, "experiment")
    check_fields(d, (*EXPERIMENT_FIELDS, *extra_fields), "", required=("key", "arms"))
    hash_version = d.get("hash_version", 1)
    if isinstance(hash_version, bool) or not isinstance(hash_version, int):
        raise ValidationError("hash_version", f"must be a whole number, got {hash_version!r}")
    targeting = d.get("targeting")
    return Experiment(
        key=d["key"],
        arms=_arms(d["arms"]),
        model=string(d, "model", "model"),
        status=status,
        salt=string(d, "salt", "salt"),
        hash_version=hash_version,
        coverage=d.get("coverage", 1.0),
        layer=_layer(d.get("layer")),
        holdout=_holdout(d.get("holdout")),
        targeting=None if targeting is None else parse_condition(targeting, "targeting"),
        overrides=_overrides(d.get("overrides") or {}),
        rollout_arm=rollout_arm,
        name=string(d, "name", "name"),
        description=string(d, "description", "description"),
    )


def _arms(raw_arms: object) -> tuple[Arm, ...]:
    if not isinstance(raw_arms, Sequence) or isinstance(raw_arms, str):
        raise ValidationError("arms", "must be a list of arms")
    arms = []
    for i, raw in enumerate(raw_arms):
        where = f"arms[{i}]"
        a = mapping(raw, where)
        check_fields(a, ARM_FIELDS, where, required=("key", "model_version", "weight"))
        control = a.get("control", False)
        if not isinstance(control, bool):
            raise ValidationError(f"{where}.control", "must be true or false")
        try:
            arms.append(Arm(a["key"], a["model_version"], a["weight"], control))
        except ValidationError as exc:
            raise _reraise(where, exc) from None
    return tuple(arms)


def _layer(doc: object) -> LayerSegment | None:
    if doc is None:
        return None
    lay = mapping(doc, "layer")
    check_fields(lay, LAYER_FIELDS, "layer", required=("key", "start", "end"))
    try:
        return LayerSegment(lay["key"], lay["start"], lay["end"])
    except ValidationError as exc:
        raise ValidationError(exc.field, exc.message) from None


def _holdout(doc: object) -> Holdout | None:
    if doc is None:
        return None
    hol = mapping(doc, "holdout")
    check_fields(hol, HOLDOUT_FIELDS, "holdout", required=("key", "fraction"))
    return Holdout(hol["key"], hol["fraction"])


def _overrides(doc: object) -> dict[str, str]:
    overrides = mapping(doc, "overrides")
    for unit, arm in overrides.items():
        if not isinstance(unit, str) or not isinstance(arm, str):
            raise ValidationError("overrides", "maps unit ids (strings) to arm keys (strings)")
    return dict(overrides)


def experiment_to_dict(experiment: Experiment) -> dict[str, Any]:
    """The document form of an experiment (inverse of :func:`experiment_from_dict`)."""
    doc: dict[str, Any] = {
        "key": experiment.key,
        "name": experiment.name,
        "description": experiment.description,
        "model": experiment.model,
        "salt": experiment.salt,
        "hash_version": experiment.hash_version,
        "coverage": experiment.coverage,
        "arms": [
            {
                "key": a.key,
                "model_version": a.model_version,
                "weight": a.weight,
                "control": a.control,
            }
            for a in experiment.arms
        ],
    }
    if experiment.layer is not None:
        doc["layer"] = {
            "key": experiment.layer.layer,
            "start": experiment.layer.start,
            "end": experiment.layer.end,
        }
    if experiment.holdout is not None:
        doc["holdout"] = {"key": experiment.holdout.key, "fraction": experiment.holdout.fraction}
    if experiment.targeting is not None:
        doc["targeting"] = experiment.targeting.to_dict()
    if experiment.overrides:
        doc["overrides"] = dict(experiment.overrides)
    return doc
