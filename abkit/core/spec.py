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

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

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


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(field, f"must be a mapping, got {type(value).__name__}")
    return value


def _check_fields(
    doc: Mapping[str, Any], allowed: Sequence[str], field: str, required: Sequence[str]
) -> None:
    for name in doc:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            where = f"{field}.{name}" if field else str(name)
            raise ValidationError(
                where, f"unknown field; {hint}allowed fields are {', '.join(allowed)}"
            )
    for name in required:
        if name not in doc:
            where = f"{field}.{name}" if field else name
            raise ValidationError(where, "is required")


def _string(doc: Mapping[str, Any], name: str, field: str, default: str = "") -> str:
    value = doc.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {value!r}")
    return value


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
    d = _mapping(doc, "experiment")
    _check_fields(d, (*EXPERIMENT_FIELDS, *extra_fields), "", required=("key", "arms"))
    raw_arms = d["arms"]
    if not isinstance(raw_arms, Sequence) or isinstance(raw_arms, str):
        raise ValidationError("arms", "must be a list of arms")
    arms = []
    for i, raw in enumerate(raw_arms):
        where = f"arms[{i}]"
        a = _mapping(raw, where)
        _check_fields(a, ARM_FIELDS, where, required=("key", "model_version", "weight"))
        control = a.get("control", False)
        if not isinstance(control, bool):
            raise ValidationError(f"{where}.control", "must be true or false")
        try:
            arms.append(Arm(a["key"], a["model_version"], a["weight"], control))
        except ValidationError as exc:
            raise _reraise(where, exc) from None
    layer = None
    if d.get("layer") is not None:
        lay = _mapping(d["layer"], "layer")
        _check_fields(lay, LAYER_FIELDS, "layer", required=("key", "start", "end"))
        try:
            layer = LayerSegment(lay["key"], lay["start"], lay["end"])
        except ValidationError as exc:
            raise ValidationError(exc.field, exc.message) from None
    holdout = None
    if d.get("holdout") is not None:
        hol = _mapping(d["holdout"], "holdout")
        _check_fields(hol, HOLDOUT_FIELDS, "holdout", required=("key", "fraction"))
        holdout = Holdout(hol["key"], hol["fraction"])
    targeting = None
    if d.get("targeting") is not None:
        targeting = parse_condition(d["targeting"], "targeting")
    overrides_doc = d.get("overrides") or {}
    overrides = _mapping(overrides_doc, "overrides")
    for unit, arm in overrides.items():
        if not isinstance(unit, str) or not isinstance(arm, str):
            raise ValidationError("overrides", "maps unit ids (strings) to arm keys (strings)")
    hash_version = d.get("hash_version", 1)
    if isinstance(hash_version, bool) or not isinstance(hash_version, int):
        raise ValidationError("hash_version", f"must be a whole number, got {hash_version!r}")
    return Experiment(
        key=d["key"],
        arms=tuple(arms),
        model=_string(d, "model", "model"),
        status=status,
        salt=_string(d, "salt", "salt"),
        hash_version=hash_version,
        coverage=d.get("coverage", 1.0),
        layer=layer,
        holdout=holdout,
        targeting=targeting,
        overrides=dict(overrides),
        rollout_arm=rollout_arm,
        name=_string(d, "name", "name"),
        description=_string(d, "description", "description"),
    )


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
