"""MLflow model URIs, and the alias moves that follow abkit's decisions -- pure.

An arm's model version may name a version of the MLflow Model Registry,
``models:/<name>/<version>``. When an experiment concludes, the registry follows the decision:

* **promote** -- the champion alias goes to the winning version; the version it replaces takes the
  previous alias, so it stays reachable (``models:/ranker@previous-champion``);
* **rollback after a promotion** -- every alias goes back to what it was before that promotion
  (before every promotion since the last rollback), but only an alias that still points where the
  promotion left it: a later move by someone else (another experiment, a person) is never undone;
* **every terminal decision** (promote, rollback, stop) tags the experiment's versions with the
  experiment, the decision and the look (:data:`TAGS`).

The decision records an :class:`AliasChange` (what it asks of the registry) in the same
transaction; the dispatcher (:mod:`abkit.services.registry`) reads the aliases once and stores
what it saw *before* it writes anything, computes the operations with :func:`plan` from those
three things (the change, what it saw, the moves it undoes), applies them -- each one idempotent
-- and records the completed :class:`AliasMove` in the audit trail. A retry after a crash reads
the stored observation, not the half-moved registry, so it computes the same operations and
nothing moves twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from abkit.core.model import Experiment
from abkit.errors import ValidationError

MODEL_URI_PREFIX = "models:/"
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)/(?P<version>[1-9][0-9]*)")

SCHEMA_VERSION = 1
MOVE_MARKER = "registry"
"""The key that marks an audit-trail snapshot as a completed registry change (its value names
the registry, ``mlflow``)."""

TAGS = ("abkit.experiment", "abkit.arm", "abkit.decision", "abkit.look", "abkit.rolled_out")
"""The tags a terminal decision sets on each MLflow version of the experiment's arms."""

_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_RESERVED_ALIAS = re.compile(r"latest|[vV][0-9]+")


@dataclass(frozen=True, slots=True)
class ModelUri:
    """A version of a registered model: ``models:/<name>/<version>``."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{MODEL_URI_PREFIX}{self.name}/{self.version}"


def parse_model_uri(value: str, field_name: str = "model_version") -> ModelUri | None:
    """The MLflow version an arm's ``model_version`` names; ``None`` when it is not an MLflow URI
    (a plain version string). A malformed ``models:/`` URI raises
    :class:`~abkit.errors.ValidationError` naming ``field_name``."""
    if not value.startswith(MODEL_URI_PREFIX):
        return None
    match = _MODEL_URI.fullmatch(value)
    if match is None:
        raise ValidationError(
            field_name,
            f"{value!r} is not an MLflow model version: write models:/<name>/<version> "
            "(e.g. models:/ranker/2); an alias or a stage (models:/ranker@champion, "
            "models:/ranker/Production) moves, so an arm cannot name one",
        )
    return ModelUri(match["name"], match["version"])


def model_uri(value: str) -> ModelUri | None:
    """:func:`parse_model_uri` that never raises: a malformed URI is not an MLflow version."""
    try:
        return parse_model_uri(value)
    except ValidationError:
        return None


def check_alias_name(field_name: str, alias: str) -> None:
    """MLflow's rules for an alias: letters, digits, ``_`` and ``-``; not ``latest`` nor
    ``v<number>`` (which name versions)."""
    if not _ALIAS.fullmatch(alias) or _RESERVED_ALIAS.fullmatch(alias):
        raise ValidationError(
            field_name,
            f"{alias!r} cannot be an MLflow alias: use letters, digits, '_' or '-' (not "
            "'latest' or v<number>, which MLflow keeps for versions)",
        )


@dataclass(frozen=True, slots=True)
class AliasNames:
    """The two aliases abkit moves (``ABKIT_MLFLOW_CHAMPION_ALIAS``, ``..._PREVIOUS_ALIAS``)."""

    champion: str = "champion"
    previous: str = "previous-champion"

    @property
    def all(self) -> tuple[str, str]:
        return (self.champion, self.previous)


AliasState = Mapping[str, str | None]
"""Where aliases point: alias name -> version (``None``: the alias is not set)."""


class OperationKind(StrEnum):
    SET_ALIAS = "set_alias"
    DELETE_ALIAS = "delete_alias"
    SET_TAG = "set_tag"


@dataclass(frozen=True, slots=True)
class Operation:
    """One idempotent write to the registry: doing it twice leaves what doing it once left."""

    kind: OperationKind
    model: str
    name: str
    """The alias, or the tag's key."""
    version: str | None = None
    """The version the alias goes to, or the tagged version."""
    value: str = ""
    """The tag's value."""

    def describe(self) -> str:
        if self.kind is OperationKind.SET_ALIAS:
            return f"{self.name} → {ModelUri(self.model, self.version or '')}"
        if self.kind is OperationKind.DELETE_ALIAS:
            return f"{self.name} removed from {self.model}"
        return f"tag {ModelUri(self.model, self.version or '')} {self.name}={self.value}"


@dataclass(frozen=True, slots=True)
class VersionTags:
    model: str
    version: str
    tags: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class AliasChange:
    """What one decision asks of the registry: the intent its outbox item carries.

    ``champion`` is the version a promotion makes champion (``None``: no alias goes anywhere
    new); ``undo`` the audit ids of the promotions whose moves a rollback undoes, newest first.
    """

    experiment_key: str
    decision_id: int
    action: str
    model: str
    names: AliasNames
    champion: str | None = None
    undo: tuple[int, ...] = ()
    tags: tuple[VersionTags, ...] = ()
    look: int | None = None
    schema_version: int = SCHEMA_VERSION

    def describe(self) -> str:
        """One line for people: what the change does."""
        parts = []
        if self.champion is not None:
            parts.append(f"{self.names.champion} → {ModelUri(self.model, self.champion)}")
        if self.undo:
            ids = ", ".join(str(i) for i in self.undo)
            parts.append(f"{self.model}'s aliases back to before the promotion (entry {ids})")
        if self.tags:
            versions = ", ".join(str(ModelUri(t.model, t.version)) for t in self.tags)
            parts.append(f"tag {versions} abkit.decision={self.action}")
        return "; ".join(parts) or "nothing"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "experiment_key": self.experiment_key,
            "decision_id": self.decision_id,
            "action": self.action,
            "look": self.look,
            "model": self.model,
            "aliases": {"champion": self.names.champion, "previous": self.names.previous},
            "champion": self.champion,
            "undo": list(self.undo),
            "tags": [
                {"model": t.model, "version": t.version, "tags": dict(t.tags)} for t in self.tags
            ],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AliasChange:
        """Strict: an intent that does not read is an error the outbox item shows, never a
        guess at what to move."""
        try:
            aliases = doc["aliases"]
            return cls(
                experiment_key=str(doc["experiment_key"]),
                decision_id=int(doc["decision_id"]),
                action=str(doc["action"]),
                model=str(doc["model"]),
                names=AliasNames(str(aliases["champion"]), str(aliases["previous"])),
                champion=_optional_str(doc.get("champion")),
                undo=tuple(int(i) for i in doc.get("undo", ())),
                tags=tuple(
                    VersionTags(
                        str(t["model"]),
                        str(t["version"]),
                        tuple((str(k), str(v)) for k, v in t["tags"].items()),
                    )
                    for t in doc.get("tags", ())
                ),
                look=int(doc["look"]) if doc.get("look") is not None else None,
                schema_version=int(doc.get("schema_version", SCHEMA_VERSION)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValidationError(
                "intent", f"the registry change cannot be read ({type(exc).__name__}: {exc})"
            ) from exc


@dataclass(frozen=True, slots=True)
class AliasMove:
    """A completed registry change, as the audit trail keeps it: where the aliases pointed
    before (what the dispatcher saw) and after, what was tagged, and why an alias was left."""

    decision_id: int
    action: str
    model: str
    before: Mapping[str, str | None]
    after: Mapping[str, str | None]
    tagged: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    attempts: int = 1
    registry: str = "mlflow"
    schema_version: int = SCHEMA_VERSION

    def reasons(self) -> tuple[str, ...]:
        """Sentences for the audit trail, one per alias and one for the tags."""
        lines = []
        for alias in self.after:
            old, new = self.before.get(alias), self.after.get(alias)
            if old != new:
                target = str(ModelUri(self.model, new)) if new is not None else "removed"
                was = str(ModelUri(self.model, old)) if old is not None else "unset"
                lines.append(f"MLflow {alias} → {target} (was {was})")
        if not lines:
            lines.append(f"MLflow aliases of {self.model} unchanged")
        lines.extend(self.notes)
        if self.tagged:
            lines.append(f"tagged {', '.join(self.tagged)} abkit.decision={self.action}")
        if self.attempts > 1:
            lines.append(f"done at attempt {self.attempts}")
        return tuple(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            MOVE_MARKER: self.registry,
            "decision_id": self.decision_id,
            "action": self.action,
            "model": self.model,
            "before": dict(self.before),
            "after": dict(self.after),
            "tagged": list(self.tagged),
            "notes": list(self.notes),
            "attempts": self.attempts,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AliasMove | None:
        """The move an audit snapshot records, or ``None`` if it records none (or cannot be
        read: then nothing is undone from it, rather than something wrong)."""
        if not isinstance(doc.get(MOVE_MARKER), str):
            return None
        try:
            return cls(
                decision_id=int(doc["decision_id"]),
                action=str(doc["action"]),
                model=str(doc["model"]),
                before=_state(doc["before"]),
                after=_state(doc["after"]),
                tagged=tuple(str(t) for t in doc.get("tagged", ())),
                notes=tuple(str(n) for n in doc.get("notes", ())),
                attempts=int(doc.get("attempts", 1)),
                registry=str(doc[MOVE_MARKER]),
                schema_version=int(doc.get("schema_version", SCHEMA_VERSION)),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to write, and the aliases as they will be once it is written."""

    operations: tuple[Operation, ...]
    after: Mapping[str, str | None]
    notes: tuple[str, ...] = field(default=())


def plan(change: AliasChange, observed: AliasState, undone: Sequence[AliasMove]) -> Plan:
    """The writes that carry out ``change`` on aliases that were ``observed`` before any write;
    ``undone`` are the recorded moves of the promotions it undoes (newest first)."""
    names = change.names
    state: dict[str, str | None] = {alias: observed.get(alias) for alias in names.all}
    notes: list[str] = []
    if change.champion is not None:
        _promote(state, names, change.champion, notes)
    found = {move.decision_id for move in undone}
    for decision_id in change.undo:
        if decision_id not in found:
            notes.append(f"the promotion (entry {decision_id}) moved no MLflow alias")
    for move in undone:
        _restore(state, move, notes)
    # A promotion gives the old champion its previous alias before moving the champion, and a
    # restore brings the champion back first: the versions involved stay reachable throughout.
    order = names.all[::-1] if change.champion is not None else names.all
    operations = [
        Operation(OperationKind.SET_ALIAS, change.model, alias, state[alias])
        if state[alias] is not None
        else Operation(OperationKind.DELETE_ALIAS, change.model, alias)
        for alias in order
        if state[alias] != observed.get(alias)
    ]
    for t in change.tags:
        operations.extend(
            Operation(OperationKind.SET_TAG, t.model, key, t.version, value)
            for key, value in t.tags
        )
    return Plan(tuple(operations), state, tuple(notes))


def _promote(
    state: dict[str, str | None], names: AliasNames, target: str, notes: list[str]
) -> None:
    current = state[names.champion]
    if current == target:
        notes.append(f"{names.champion} was already on version {target}")
        return
    if current is not None:  # the replaced champion stays reachable
        state[names.previous] = current
    state[names.champion] = target


def _restore(state: dict[str, str | None], move: AliasMove, notes: list[str]) -> None:
    """Put back each alias ``move`` changed -- if it still points where ``move`` left it."""
    for alias, left in move.after.items():
        was = move.before.get(alias)
        if left == was:
            continue
        if alias not in state:
            notes.append(f"{alias} is no longer an alias abkit moves: left as it is")
        elif state[alias] != left:
            now = state[alias] or "nothing"
            notes.append(
                f"{alias} points to {now} now, not to {left or 'nothing'} as the promotion "
                f"(entry {move.decision_id}) left it: left as it is"
            )
        else:
            state[alias] = was


def alias_change(
    experiment: Experiment,
    *,
    decision_id: int,
    action: str,
    rollout_arm: str,
    look: int | None,
    names: AliasNames,
    undo: tuple[int, ...] = (),
) -> AliasChange | None:
    """The registry change of a terminal decision that serves ``rollout_arm`` to everyone;
    ``None`` when no arm names an MLflow version. A promotion makes the rollout arm's version
    champion; a rollback undoes the promotions in ``undo``; each decision tags every version."""
    uris = [(arm, model_uri(arm.model_version)) for arm in experiment.arms]
    mlflow = [(arm, uri) for arm, uri in uris if uri is not None]
    if not mlflow:
        return None
    rollout = next((uri for arm, uri in mlflow if arm.key == rollout_arm), None)
    model = (rollout or mlflow[0][1]).name
    champion = rollout.version if action == "promote" and rollout is not None else None
    tags: dict[tuple[str, str], VersionTags] = {}
    # The rollout arm last: a version two arms share carries the rollout arm's tags.
    for arm, uri in sorted(mlflow, key=lambda pair: pair[0].key == rollout_arm):
        values = (
            experiment.key,
            arm.key,
            action,
            str(look) if look is not None else "manual",
            "true" if arm.key == rollout_arm else "false",
        )
        tags[(uri.name, uri.version)] = VersionTags(
            uri.name, uri.version, tuple(zip(TAGS, values, strict=True))
        )
    return AliasChange(
        experiment_key=experiment.key,
        decision_id=decision_id,
        action=action,
        model=model,
        names=names,
        champion=champion,
        undo=undo,
        tags=tuple(tags.values()),
        look=look,
    )


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _state(doc: object) -> dict[str, str | None]:
    if not isinstance(doc, Mapping):
        raise TypeError("an alias state is a mapping")
    return {str(k): _optional_str(v) for k, v in doc.items()}
