"""The experiment config on the wire: ``ConfigUpdate`` messages of ``WatchConfig``.

The server turns its experiments into one full update per change (:func:`full_update`); a
client that assigns locally (:class:`abkit.client.LocalClient`) turns an update back into
validated experiments (:func:`read_update`) and trusts it only if everything holds:

* the ``format`` is one it reads (:data:`FORMAT`) -- a server of another version is refused,
  not half understood;
* every experiment passes the same validation as an experiment file (arms, weights, keys,
  layers, targeting), and every enum value is one it knows;
* each experiment's ``config_checksum`` and the update's ``checksum`` equal what the client
  computes from the decoded content (:func:`abkit.core.model.catalog_checksum`): a field the
  server has and this client lost, or a changed hashing rule, shows up as a mismatch.

Any failure raises :class:`ConfigRejected` naming the field; the client keeps its last good
config. Pure functions of messages; no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from abkit.core.model import (
    Arm,
    Experiment,
    ExperimentStatus,
    Holdout,
    LayerSegment,
    catalog_checksum,
    validate_catalog,
)
from abkit.core.targeting import parse_condition
from abkit.errors import ValidationError
from abkit.v1 import assignment_pb2 as pb

FORMAT = 1
"""The config format this version writes and reads."""

_STATUS = {
    ExperimentStatus.DRAFT: pb.EXPERIMENT_STATUS_DRAFT,
    ExperimentStatus.RUNNING: pb.EXPERIMENT_STATUS_RUNNING,
    ExperimentStatus.PAUSED: pb.EXPERIMENT_STATUS_PAUSED,
    ExperimentStatus.CONCLUDED: pb.EXPERIMENT_STATUS_CONCLUDED,
}
_STATUS_FROM_PROTO = {v: k for k, v in _STATUS.items()}


class ConfigRejected(ValueError):
    """A config update this client will not serve; ``str()`` says why."""


def experiment_message(experiment: Experiment) -> Any:
    message = pb.ExperimentConfig(
        key=experiment.key,
        status=_STATUS[experiment.status],
        model=experiment.model,
        salt=experiment.salt,
        hash_version=experiment.hash_version,
        coverage=experiment.coverage,
        arms=[
            pb.ArmConfig(
                key=a.key, model_version=a.model_version, weight=a.weight, control=a.control
            )
            for a in experiment.arms
        ],
        targeting_json=""
        if experiment.targeting is None
        else json.dumps(experiment.targeting.to_dict(), sort_keys=True),
        overrides=dict(experiment.overrides),
        rollout_arm=experiment.rollout_arm or "",
        config_checksum=experiment.config_checksum,
    )
    if experiment.layer is not None:
        layer = experiment.layer
        message.layer.CopyFrom(pb.LayerConfig(key=layer.layer, start=layer.start, end=layer.end))
    if experiment.holdout is not None:
        holdout = experiment.holdout
        message.holdout.CopyFrom(pb.HoldoutConfig(key=holdout.key, fraction=holdout.fraction))
    return message


def full_update(experiments: Sequence[Experiment]) -> Any:
    """The whole config as one update (what a server sends on connect and after a change)."""
    return pb.ConfigUpdate(
        format=FORMAT,
        checksum=catalog_checksum(experiments),
        full=True,
        experiments=[experiment_message(e) for e in experiments],
    )


def heartbeat(checksum: str) -> Any:
    """ "Still the config ``checksum``": sent when nothing changed."""
    return pb.ConfigUpdate(format=FORMAT, checksum=checksum, full=False)


def read_update(update: Any) -> tuple[Experiment, ...]:
    """The experiments of a full update, checked (module docstring); raises ConfigRejected."""
    if update.format != FORMAT:
        raise ConfigRejected(
            f"format: the server sent config format {update.format}; this client reads format "
            f"{FORMAT} (upgrade the client, or the server, so that they match)"
        )
    if not update.full:
        raise ConfigRejected("full: expected a whole config, got a heartbeat")
    experiments = []
    for i, message in enumerate(update.experiments):
        try:
            experiments.append(_experiment(message))
        except ValidationError as exc:
            raise ConfigRejected(f"experiments[{i}].{exc.field}: {exc.message}") from None
        sent, computed = message.config_checksum, experiments[-1].config_checksum
        if sent != computed:
            raise ConfigRejected(
                f"experiments[{i}].config_checksum: the server says {sent!r}, the content "
                f"gives {computed!r} -- the server assigns differently than this client would"
            )
    try:
        validate_catalog(experiments)
    except ValidationError as exc:
        raise ConfigRejected(f"experiments: {exc.field}: {exc.message}") from None
    computed = catalog_checksum(experiments)
    if update.checksum != computed:
        raise ConfigRejected(
            f"checksum: the server says {update.checksum!r}, the content gives {computed!r} -- "
            "part of the config was lost or changed on the way"
        )
    return tuple(experiments)


def _experiment(message: Any) -> Experiment:
    status = _STATUS_FROM_PROTO.get(message.status)
    if status is None:
        raise ValidationError("status", f"unknown experiment status {message.status}")
    targeting = None
    if message.targeting_json:
        try:
            doc = json.loads(message.targeting_json)
        except ValueError as exc:
            raise ValidationError("targeting_json", f"is not JSON: {exc}") from None
        targeting = parse_condition(doc, "targeting")
    layer = None
    if message.HasField("layer"):
        layer = LayerSegment(message.layer.key, message.layer.start, message.layer.end)
    holdout = None
    if message.HasField("holdout"):
        holdout = Holdout(message.holdout.key, message.holdout.fraction)
    arms = []
    for i, a in enumerate(message.arms):
        try:
            arms.append(Arm(a.key, a.model_version, a.weight, a.control))
        except ValidationError as exc:
            raise ValidationError(f"arms[{i}].{exc.field}", exc.message) from None
    return Experiment(
        key=message.key,
        arms=tuple(arms),
        model=message.model,
        status=status,
        salt=message.salt,
        hash_version=message.hash_version,
        coverage=message.coverage,
        layer=layer,
        holdout=holdout,
        targeting=targeting,
        overrides=dict(message.overrides),
        rollout_arm=message.rollout_arm or None,
    )
