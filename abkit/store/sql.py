"""The SQL store: repositories over SQLAlchemy Core, for SQLite and PostgreSQL alike."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, Insert, func, insert, null, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from abkit.core.model import (
    Arm,
    Event,
    Experiment,
    ExperimentStatus,
    Exposure,
    Holdout,
    LayerSegment,
    ModelStatus,
)
from abkit.core.policy_document import policy_to_dict, read_policy
from abkit.core.rows import (
    EVENT_COLUMNS,
    EXPOSURE_COLUMNS,
    decode_events,
    decode_exposures,
    encode_events,
    encode_exposures,
)
from abkit.core.targeting import parse_condition
from abkit.errors import ConflictError, NotFoundError, SchemaOutOfDateError, StoreUnavailableError
from abkit.ports import AuditEntry, DecisionRecord, ExperimentRecord, ModelVersion, OutboxItem
from abkit.store.analysis import SqlAnalysis
from abkit.store.engine import create_store_engine
from abkit.store.increments import SqlMaintained, ingestion_lock
from abkit.store.schema import Base

_EXPERIMENTS = Base.metadata.tables["experiments"]
_ARMS = Base.metadata.tables["arms"]
_EXPOSURES = Base.metadata.tables["exposures"]
_EVENTS = Base.metadata.tables["events"]
_DECISIONS = Base.metadata.tables["decisions"]
_MODELS = Base.metadata.tables["model_versions"]
_LAYERS = Base.metadata.tables["layers"]
_HOLDOUTS = Base.metadata.tables["holdouts"]
_AUDIT = Base.metadata.tables["audit_log"]
_OUTBOX = Base.metadata.tables["outbox"]


def _insert_ignoring_duplicates(conn: Connection, table: Any) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


COPY_THRESHOLD = 50
"""From this many rows, PostgreSQL inserts go through COPY into a staging table."""


def copy_insert(
    conn: Connection, table: str, columns: Sequence[str], text: str, order_by: str, rows: int
) -> int:
    """Insert ``rows`` rows, given as COPY ``text`` (:mod:`abkit.store.copy_text`), with
    PostgreSQL's ``COPY``, keeping the writes idempotent.

    First, ``COPY`` straight into the table inside a savepoint: the common case -- new units, new
    event ids -- costs one pass. If a key already exists (a replayed batch, another replica, a
    unit seen twice in the batch), COPY fails as a whole; the savepoint is rolled back and the
    rows go through a session-local staging table and one ``INSERT ... SELECT ... ON CONFLICT
    DO NOTHING`` (earliest first). Everything runs on the transaction's own connection, so it
    commits or rolls back with the rest. Returns how many rows were new.
    """
    # Table and column names come from this module's constants, never from input.
    names = ", ".join(columns)
    driver = conn.connection.driver_connection
    try:
        with (
            conn.begin_nested(),
            driver.cursor() as cursor,  # type: ignore[union-attr]
            cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy,
        ):
            copy.write(text)
        return rows
    except psycopg.errors.UniqueViolation:
        pass
    stage = f"abkit_stage_{table}"
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} "  # noqa: S608
            f"AS SELECT {names} FROM {table} WITH NO DATA"
        )
        with cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            copy.write(text)
        cursor.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "  # noqa: S608
            f"ORDER BY {order_by} ON CONFLICT DO NOTHING"
        )
        inserted = int(cursor.rowcount)
        cursor.execute(f"DELETE FROM {stage}")  # noqa: S608
        return inserted


class SqlExperiments:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def find(self, key: str) -> ExperimentRecord | None:
        records = self._load(key)
        return records[0] if records else None

    def get(self, key: str) -> ExperimentRecord:
        record = self.find(key)
        if record is None:
            raise NotFoundError(f"experiment {key!r} does not exist")
        return record

    def list(self) -> builtins.list[ExperimentRecord]:
        return self._load(None)

    def revisions(self) -> builtins.list[tuple[str, int]]:
        query = select(_EXPERIMENTS.c.key, _EXPERIMENTS.c.revision).order_by(_EXPERIMENTS.c.key)
        return [(key, revision) for key, revision in self._conn.execute(query)]

    def _load(self, key: str | None) -> builtins.list[ExperimentRecord]:
        query = select(_EXPERIMENTS, _HOLDOUTS.c.fraction.label("holdout_fraction")).join_from(
            _EXPERIMENTS, _HOLDOUTS, _EXPERIMENTS.c.holdout_key == _HOLDOUTS.c.key, isouter=True
        )
        arms_query = select(_ARMS).order_by(_ARMS.c.experiment_key, _ARMS.c.position)
        if key is not None:
            query = query.where(_EXPERIMENTS.c.key == key)
            arms_query = arms_query.where(_ARMS.c.experiment_key == key)
        rows = self._conn.execute(query.order_by(_EXPERIMENTS.c.key)).mappings().all()
        arms: dict[str, builtins.list[Arm]] = {}
        for a in self._conn.execute(arms_query).mappings():
            arms.setdefault(a["experiment_key"], []).append(
                Arm(a["key"], a["model_version"], a["weight"], a["is_control"])
            )
        return [_record_from_row(row, tuple(arms.get(row["key"], ()))) for row in rows]

    def save(self, record: ExperimentRecord, *, expected_revision: int | None) -> ExperimentRecord:
        exp = record.experiment
        self._ensure_layer_and_holdout(exp, record.updated_at)
        revision = 1 if expected_revision is None else expected_revision + 1
        values = _row_values(record, revision)
        if expected_revision is None:
            try:
                with self._conn.begin_nested():
                    self._conn.execute(insert(_EXPERIMENTS).values(**values, key=exp.key))
            except IntegrityError:
                raise ConflictError(
                    f"experiment {exp.key!r} already exists; apply it again to update it"
                ) from None
        else:
            result = self._conn.execute(
                update(_EXPERIMENTS)
                .where(_EXPERIMENTS.c.key == exp.key)
                .where(_EXPERIMENTS.c.revision == expected_revision)
                .values(**values)
            )
            if result.rowcount != 1:
                raise ConflictError(
                    f"experiment {exp.key!r} was changed concurrently (expected revision "
                    f"{expected_revision}); reload it and try again"
                )
            self._conn.execute(_ARMS.delete().where(_ARMS.c.experiment_key == exp.key))
        self._conn.execute(
            insert(_ARMS),
            [
                {
                    "experiment_key": exp.key,
                    "key": a.key,
                    "position": i,
                    "model_version": a.model_version,
                    "weight": a.weight,
                    "is_control": a.control,
                }
                for i, a in enumerate(exp.arms)
            ],
        )
        return ExperimentRecord(
            experiment=exp,
            revision=revision,
            created_at=record.created_at,
            updated_at=record.updated_at,
            started_at=record.started_at,
            concluded_at=record.concluded_at,
            policy=record.policy,
            policy_error=record.policy_error,
        )

    def _ensure_layer_and_holdout(self, exp: Experiment, now: datetime) -> None:
        if exp.layer is not None:
            self._conn.execute(
                _insert_ignoring_duplicates(self._conn, _LAYERS).values(
                    key=exp.layer.layer, description="", created_at=now
                )
            )
        if exp.holdout is not None:
            stored = self._conn.execute(
                select(_HOLDOUTS.c.fraction).where(_HOLDOUTS.c.key == exp.holdout.key)
            ).scalar_one_or_none()
            if stored is None:
                self._conn.execute(
                    insert(_HOLDOUTS).values(
                        key=exp.holdout.key, fraction=exp.holdout.fraction, created_at=now
                    )
                )
            elif stored != exp.holdout.fraction:
                raise ConflictError(
                    f"holdout {exp.holdout.key!r} already holds out {stored:g} of units; use that "
                    "fraction or a new holdout key "
                    f"(this experiment asks {exp.holdout.fraction:g})"
                )


def _row_values(record: ExperimentRecord, revision: int) -> dict[str, Any]:
    exp = record.experiment
    return {
        "name": exp.name,
        "description": exp.description,
        "model": exp.model,
        "status": exp.status.value,
        "salt": exp.salt,
        "hash_version": exp.hash_version,
        "coverage": exp.coverage,
        "layer_key": exp.layer.layer if exp.layer else None,
        "layer_start": exp.layer.start if exp.layer else None,
        "layer_end": exp.layer.end if exp.layer else None,
        "holdout_key": exp.holdout.key if exp.holdout else None,
        "targeting": exp.targeting.to_dict() if exp.targeting is not None else None,
        "overrides": dict(exp.overrides),
        "policy": policy_to_dict(record.policy) if record.policy is not None else None,
        "rollout_arm": exp.rollout_arm,
        "config_checksum": exp.config_checksum,
        "revision": revision,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "started_at": record.started_at,
        "concluded_at": record.concluded_at,
    }


def _record_from_row(row: Any, arms: tuple[Arm, ...]) -> ExperimentRecord:
    layer = None
    if row["layer_key"] is not None:
        layer = LayerSegment(row["layer_key"], row["layer_start"], row["layer_end"])
    holdout = None
    if row["holdout_key"] is not None:
        holdout = Holdout(row["holdout_key"], row["holdout_fraction"])
    targeting = parse_condition(row["targeting"]) if row["targeting"] is not None else None
    experiment = Experiment(
        key=row["key"],
        arms=arms,
        model=row["model"],
        status=ExperimentStatus(row["status"]),
        salt=row["salt"],
        hash_version=row["hash_version"],
        coverage=row["coverage"],
        layer=layer,
        holdout=holdout,
        targeting=targeting,
        overrides=dict(row["overrides"] or {}),
        rollout_arm=row["rollout_arm"],
        name=row["name"],
        description=row["description"],
    )
    policy, policy_error = read_policy(row["policy"])
    return ExperimentRecord(
        experiment=experiment,
        revision=row["revision"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        concluded_at=row["concluded_at"],
        policy=policy,
        policy_error=policy_error,
    )


class SqlExposures:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, exposures: Sequence[Exposure]) -> int:
        if not exposures:
            return 0
        ingestion_lock(self._conn)
        if self._conn.dialect.name == "postgresql" and len(exposures) >= COPY_THRESHOLD:
            # Earliest first: within a batch, the first exposure of a unit is the one kept.
            text = encode_exposures(exposures)
            return self.add_text(text, len(exposures))
        # RETURNING counts the rows actually inserted; SQLAlchemy batches the executemany into
        # multi-row INSERTs ("insertmanyvalues") on both backends.
        stmt = _insert_ignoring_duplicates(self._conn, _EXPOSURES).returning(_EXPOSURES.c.unit_id)
        ordered = sorted(exposures, key=_exposed_at)  # the earliest of a unit's rows is kept
        return len(self._conn.execute(stmt, [e._asdict() for e in ordered]).all())

    def add_text(self, text: str, rows: int) -> int:
        """Rows in :mod:`abkit.core.rows` text: PostgreSQL copies them as they are."""
        if not rows:
            return 0
        if self._conn.dialect.name == "postgresql":
            ingestion_lock(self._conn)
            return copy_insert(self._conn, "exposures", EXPOSURE_COLUMNS, text, "exposed_at", rows)
        return self.add(decode_exposures(text))

    def get(self, experiment_key: str, unit_id: str) -> Exposure | None:
        row = self._conn.execute(
            select(
                _EXPOSURES.c.experiment_key,
                _EXPOSURES.c.unit_id,
                _EXPOSURES.c.arm_key,
                _EXPOSURES.c.model_version,
                _EXPOSURES.c.config_checksum,
                _EXPOSURES.c.exposed_at,
                _EXPOSURES.c.trace_id,
                _EXPOSURES.c.span_id,
            ).where(_EXPOSURES.c.experiment_key == experiment_key, _EXPOSURES.c.unit_id == unit_id)
        ).one_or_none()
        return None if row is None else Exposure(*row)

    def counts(self, experiment_key: str) -> dict[str, int]:
        rows = self._conn.execute(
            select(_EXPOSURES.c.arm_key, func.count())
            .where(_EXPOSURES.c.experiment_key == experiment_key)
            .group_by(_EXPOSURES.c.arm_key)
        )
        return {arm: n for arm, n in rows}

    def delete_units(self, unit_ids: Sequence[str]) -> int:
        result = self._conn.execute(_EXPOSURES.delete().where(_EXPOSURES.c.unit_id.in_(unit_ids)))
        return int(result.rowcount)

    def delete_before(self, cutoff: datetime, experiment_keys: Sequence[str]) -> int:
        result = self._conn.execute(
            _EXPOSURES.delete().where(
                _EXPOSURES.c.exposed_at < cutoff, _EXPOSURES.c.experiment_key.in_(experiment_keys)
            )
        )
        return int(result.rowcount)


def _exposed_at(exposure: Exposure) -> datetime:
    return exposure.exposed_at


class SqlEvents:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, events: Sequence[Event]) -> int:
        if not events:
            return 0
        ingestion_lock(self._conn)
        if self._conn.dialect.name == "postgresql" and len(events) >= COPY_THRESHOLD:
            return self.add_text(encode_events(events), len(events))
        stmt = _insert_ignoring_duplicates(self._conn, _EVENTS).returning(_EVENTS.c.id)
        return len(self._conn.execute(stmt, [e._asdict() for e in events]).all())

    def add_text(self, text: str, rows: int) -> int:
        """Rows in :mod:`abkit.core.rows` text: PostgreSQL copies them as they are."""
        if not rows:
            return 0
        if self._conn.dialect.name == "postgresql":
            ingestion_lock(self._conn)
            return copy_insert(self._conn, "events", EVENT_COLUMNS, text, "occurred_at", rows)
        return self.add(decode_events(text))

    def get(self, event_id: str) -> Event | None:
        row = self._conn.execute(
            select(
                _EVENTS.c.event_id,
                _EVENTS.c.unit_id,
                _EVENTS.c.metric,
                _EVENTS.c.value,
                _EVENTS.c.occurred_at,
                _EVENTS.c.trace_id,
                _EVENTS.c.span_id,
            ).where(_EVENTS.c.event_id == event_id)
        ).one_or_none()
        return None if row is None else Event(*row)

    def count(self, metric: str | None = None) -> int:
        query = select(func.count()).select_from(_EVENTS)
        if metric is not None:
            query = query.where(_EVENTS.c.metric == metric)
        return int(self._conn.execute(query).scalar_one())

    def delete_units(self, unit_ids: Sequence[str]) -> int:
        result = self._conn.execute(_EVENTS.delete().where(_EVENTS.c.unit_id.in_(unit_ids)))
        return int(result.rowcount)

    def delete_before(self, cutoff: datetime) -> int:
        result = self._conn.execute(_EVENTS.delete().where(_EVENTS.c.occurred_at < cutoff))
        return int(result.rowcount)


class SqlAudit:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, entry: AuditEntry) -> AuditEntry:
        new_id = self._conn.execute(
            insert(_AUDIT)
            .values(action=entry.action, actor=entry.actor, detail=dict(entry.detail), at=entry.at)
            .returning(_AUDIT.c.id)
        ).scalar_one()
        return replace(entry, id=new_id)

    def list(self) -> builtins.list[AuditEntry]:
        rows = self._conn.execute(select(_AUDIT).order_by(_AUDIT.c.at, _AUDIT.c.id)).mappings()
        return [AuditEntry(r["action"], r["actor"], r["at"], r["detail"], r["id"]) for r in rows]


class SqlDecisions:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, decision: DecisionRecord) -> DecisionRecord:
        statement = (
            insert(_DECISIONS)
            .values(
                experiment_key=decision.experiment_key,
                action=decision.action,
                arm_key=decision.arm_key,
                reason=decision.reason,
                actor=decision.actor,
                config_checksum=decision.config_checksum,
                snapshot=dict(decision.snapshot),
                decided_at=decision.decided_at,
                look=decision.look,
            )
            .returning(_DECISIONS.c.id)
        )
        try:
            with self._conn.begin_nested():
                new_id = self._conn.execute(statement).scalar_one()
        except IntegrityError as exc:
            if decision.look is not None and "look" in str(exc.orig):
                raise ConflictError(
                    f"look {decision.look} of {decision.experiment_key!r} is already recorded"
                ) from None
            raise
        return replace(decision, id=new_id)

    def last_look(self, experiment_key: str) -> DecisionRecord | None:
        row = (
            self._conn.execute(
                select(_DECISIONS)
                .where(
                    _DECISIONS.c.experiment_key == experiment_key, _DECISIONS.c.look.is_not(None)
                )
                .order_by(_DECISIONS.c.look.desc())
                .limit(1)
            )
            .mappings()
            .one_or_none()
        )
        return None if row is None else _decision(row)

    def list(self, experiment_key: str) -> builtins.list[DecisionRecord]:
        rows = self._conn.execute(
            select(_DECISIONS)
            .where(_DECISIONS.c.experiment_key == experiment_key)
            .order_by(_DECISIONS.c.decided_at, _DECISIONS.c.id)
        ).mappings()
        return [_decision(r) for r in rows]


def _decision(r: Any) -> DecisionRecord:
    return DecisionRecord(
        experiment_key=r["experiment_key"],
        action=r["action"],
        reason=r["reason"],
        actor=r["actor"],
        config_checksum=r["config_checksum"],
        decided_at=r["decided_at"],
        arm_key=r["arm_key"],
        snapshot=r["snapshot"],
        look=r["look"],
        id=r["id"],
    )


class SqlModels:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def register(
        self, model: str, version: str, *, now: datetime, experiment_key: str | None = None
    ) -> ModelVersion:
        self._conn.execute(
            _insert_ignoring_duplicates(self._conn, _MODELS).values(
                model=model,
                version=version,
                status=ModelStatus.CANDIDATE.value,
                experiment_key=experiment_key,
                created_at=now,
                updated_at=now,
            )
        )
        return self._get(model, version)

    def set_status(
        self, model: str, version: str, status: ModelStatus, *, now: datetime
    ) -> ModelVersion:
        try:
            with self._conn.begin_nested():
                result = self._conn.execute(
                    update(_MODELS)
                    .where(_MODELS.c.model == model, _MODELS.c.version == version)
                    .values(status=ModelStatus(status).value, updated_at=now)
                )
        except IntegrityError:
            # uq_model_versions_one_live: another version is live (maybe set by a racing worker).
            raise ConflictError(
                f"model {model!r} already has a live version; demote it before making "
                f"{version!r} live"
            ) from None
        if result.rowcount != 1:
            raise NotFoundError(f"model {model!r} has no version {version!r} in the registry")
        return self._get(model, version)

    def _get(self, model: str, version: str) -> ModelVersion:
        row = (
            self._conn.execute(
                select(_MODELS).where(_MODELS.c.model == model, _MODELS.c.version == version)
            )
            .mappings()
            .one()
        )
        return _model_version(row)

    def versions(self, model: str | None = None) -> list[ModelVersion]:
        query = select(_MODELS).order_by(_MODELS.c.model, _MODELS.c.created_at, _MODELS.c.version)
        if model is not None:
            query = query.where(_MODELS.c.model == model)
        return [_model_version(r) for r in self._conn.execute(query).mappings()]

    def live(self, model: str) -> ModelVersion | None:
        row = (
            self._conn.execute(
                select(_MODELS).where(
                    _MODELS.c.model == model, _MODELS.c.status == ModelStatus.LIVE.value
                )
            )
            .mappings()
            .one_or_none()
        )
        return None if row is None else _model_version(row)


def _model_version(row: Any) -> ModelVersion:
    return ModelVersion(
        model=row["model"],
        version=row["version"],
        status=ModelStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        experiment_key=row["experiment_key"],
    )


class SqlOutbox:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, item: OutboxItem) -> OutboxItem:
        new_id = self._conn.execute(
            insert(_OUTBOX)
            .values(
                experiment_key=item.experiment_key,
                decision_id=item.decision_id,
                kind=item.kind,
                key=item.key,
                intent=dict(item.intent),
                # SQL NULL, not JSON null: what ``observe`` looks for (``null()`` either way).
                observed=dict(item.observed) if item.observed is not None else null(),
                attempts=item.attempts,
                last_error=item.last_error,
                next_attempt_at=item.next_attempt_at,
                claimed_by=item.claimed_by,
                claimed_until=item.claimed_until,
                created_at=item.created_at,
                updated_at=item.created_at,
            )
            .returning(_OUTBOX.c.id)
        ).scalar_one()
        return replace(item, id=new_id)

    def pending(self, experiment_key: str | None = None) -> builtins.list[OutboxItem]:
        query = select(_OUTBOX).order_by(_OUTBOX.c.id)
        if experiment_key is not None:
            query = query.where(_OUTBOX.c.experiment_key == experiment_key)
        return [_outbox_item(r) for r in self._conn.execute(query).mappings()]

    def claim(
        self, item_id: int, *, owner: str, now: datetime, until: datetime
    ) -> OutboxItem | None:
        free = (_OUTBOX.c.claimed_until.is_(None)) | (_OUTBOX.c.claimed_until <= now)
        result = self._conn.execute(
            update(_OUTBOX)
            .where(_OUTBOX.c.id == item_id, _OUTBOX.c.next_attempt_at <= now, free)
            .values(
                claimed_by=owner,
                claimed_until=until,
                attempts=_OUTBOX.c.attempts + 1,
                updated_at=now,
            )
        )
        if result.rowcount != 1:
            return None
        row = self._conn.execute(select(_OUTBOX).where(_OUTBOX.c.id == item_id)).mappings().one()
        return _outbox_item(row)

    def observe(self, item_id: int, *, owner: str, observed: Mapping[str, Any]) -> bool:
        result = self._conn.execute(
            update(_OUTBOX)
            .where(
                _OUTBOX.c.id == item_id,
                _OUTBOX.c.claimed_by == owner,
                _OUTBOX.c.observed.is_(None),
            )
            .values(observed=dict(observed))
        )
        return bool(result.rowcount == 1)

    def release(
        self, item_id: int, *, owner: str, error: str, retry_at: datetime, now: datetime
    ) -> bool:
        result = self._conn.execute(
            update(_OUTBOX)
            .where(_OUTBOX.c.id == item_id, _OUTBOX.c.claimed_by == owner)
            .values(
                claimed_by=None,
                claimed_until=None,
                last_error=error,
                next_attempt_at=retry_at,
                updated_at=now,
            )
        )
        return bool(result.rowcount == 1)

    def remove(self, item_id: int, *, owner: str) -> bool:
        result = self._conn.execute(
            _OUTBOX.delete().where(_OUTBOX.c.id == item_id, _OUTBOX.c.claimed_by == owner)
        )
        return bool(result.rowcount == 1)


def _outbox_item(r: Any) -> OutboxItem:
    return OutboxItem(
        experiment_key=r["experiment_key"],
        decision_id=r["decision_id"],
        kind=r["kind"],
        key=r["key"],
        intent=r["intent"],
        created_at=r["created_at"],
        next_attempt_at=r["next_attempt_at"],
        attempts=r["attempts"],
        last_error=r["last_error"],
        observed=r["observed"],
        claimed_by=r["claimed_by"],
        claimed_until=r["claimed_until"],
        id=r["id"],
    )


class SqlTransaction:
    def __init__(self, conn: Connection) -> None:
        self.connection = conn
        self.analysis = SqlAnalysis(conn)
        self.maintained = SqlMaintained(conn)
        self.experiments = SqlExperiments(conn)
        self.exposures = SqlExposures(conn)
        self.events = SqlEvents(conn)
        self.decisions = SqlDecisions(conn)
        self.models = SqlModels(conn)
        self.audit = SqlAudit(conn)
        self.outbox = SqlOutbox(conn)


class SqlStore:
    """The production store. ``SqlStore.from_url("sqlite:///abkit.db")``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str, **engine_kwargs: Any) -> SqlStore:
        return cls(create_store_engine(url, **engine_kwargs))

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        try:
            with self.engine.begin() as conn:
                yield SqlTransaction(conn)
        except DBAPIError as exc:
            if _is_missing_schema(exc):
                raise SchemaOutOfDateError(
                    f"the database has no abkit schema, or an old one ({_first_line(exc)}); "
                    "migrate it to the latest revision"
                ) from exc
            if isinstance(exc, IntegrityError) or not _is_unavailable(exc):
                raise
            raise StoreUnavailableError(f"the store is unreachable: {_first_line(exc)}") from exc

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(f"the store is unreachable: {_first_line(exc)}") from exc

    def close(self) -> None:
        self.engine.dispose()


def _is_missing_schema(exc: DBAPIError) -> bool:
    # SQLite: "no such table"/"no such column"; PostgreSQL: undefined_table / undefined_column.
    code = getattr(exc.orig, "sqlstate", None)
    return (
        code in ("42P01", "42703")
        or "no such table" in str(exc.orig)
        or ("no such column" in str(exc.orig))
    )


def _is_unavailable(exc: DBAPIError) -> bool:
    return isinstance(exc, OperationalError) or exc.connection_invalidated


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
