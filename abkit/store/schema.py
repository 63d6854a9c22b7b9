"""The SQL schema, as SQLAlchemy 2 typed models.

Alembic migrations in ``migrations/`` create exactly this schema (a test compares them). The
high-volume fact tables -- ``exposures`` and ``events`` -- carry no foreign keys on purpose: they
are written in large batches off the request path, and rows for an experiment are only ever
inserted by a server that has that experiment in its config.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

KEY = 64
UNIT = 256
CHECKSUM = 16
TRACE_ID = 32
SPAN_ID = 16

EXPERIMENT_STATUSES = ("draft", "running", "paused", "concluded")
MODEL_VERSION_STATUSES = ("candidate", "live", "previous", "retired")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zone type, so values are stored as naive
    UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts and compares correctly) and come back
    marked UTC. Naive datetimes are refused: a silently local time is a wrong exposure order.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON().with_variant(JSONB(), "postgresql"),
    }


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class LayerRow(Base):
    __tablename__ = "layers"

    key: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class HoldoutRow(Base):
    __tablename__ = "holdouts"

    key: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    fraction: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime]

    __table_args__ = (CheckConstraint("fraction >= 0 AND fraction <= 1", name="fraction"),)


class ExperimentRow(Base):
    __tablename__ = "experiments"

    key: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(String(KEY), default="")
    status: Mapped[str] = mapped_column(String(16))
    salt: Mapped[str] = mapped_column(String(128))
    hash_version: Mapped[int] = mapped_column(Integer)
    coverage: Mapped[float] = mapped_column(Float)
    layer_key: Mapped[str | None] = mapped_column(ForeignKey("layers.key"))
    layer_start: Mapped[float | None] = mapped_column(Float)
    layer_end: Mapped[float | None] = mapped_column(Float)
    holdout_key: Mapped[str | None] = mapped_column(ForeignKey("holdouts.key"))
    targeting: Mapped[dict[str, Any] | None]
    overrides: Mapped[dict[str, Any]]
    policy: Mapped[dict[str, Any] | None]
    rollout_arm: Mapped[str | None] = mapped_column(String(KEY))
    config_checksum: Mapped[str] = mapped_column(String(CHECKSUM))
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    concluded_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_in("status", EXPERIMENT_STATUSES), name="status"),
        CheckConstraint("coverage >= 0 AND coverage <= 1", name="coverage"),
        CheckConstraint(
            "(layer_key IS NULL) = (layer_start IS NULL) AND "
            "(layer_key IS NULL) = (layer_end IS NULL)",
            name="layer_complete",
        ),
        CheckConstraint(
            "(status = 'concluded') = (rollout_arm IS NOT NULL)", name="rollout_when_concluded"
        ),
    )


class ArmRow(Base):
    __tablename__ = "arms"

    experiment_key: Mapped[str] = mapped_column(
        ForeignKey("experiments.key", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str] = mapped_column(String(128))
    weight: Mapped[float] = mapped_column(Float)
    is_control: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (CheckConstraint("weight > 0 AND weight <= 1", name="weight"),)


class ExposureRow(Base):
    """First exposure of a unit to an experiment: one row per (experiment, unit), ever."""

    __tablename__ = "exposures"

    experiment_key: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(UNIT), primary_key=True)
    arm_key: Mapped[str] = mapped_column(String(KEY))
    model_version: Mapped[str] = mapped_column(String(128))
    config_checksum: Mapped[str] = mapped_column(String(CHECKSUM))
    exposed_at: Mapped[datetime]
    trace_id: Mapped[str] = mapped_column(String(TRACE_ID), default="")
    span_id: Mapped[str] = mapped_column(String(SPAN_ID), default="")
    seq: Mapped[int | None] = mapped_column(BigInteger)
    """Place in the order of ingestion (migration 0006), set by the database: a sequence on
    PostgreSQL, a trigger on SQLite. Incremental looks read what arrived after a watermark."""

    # On PostgreSQL the primary key carries what the analysis reads (migrations 0005, 0006), so
    # an experiment's exposures come in unit order from the index alone.
    __table_args__ = (
        PrimaryKeyConstraint(
            "experiment_key", "unit_id", postgresql_include=["arm_key", "exposed_at", "seq"]
        ),
        Index("ix_exposures_experiment_seq", "experiment_key", "seq"),
    )


class EventRow(Base):
    """A business KPI event. ``event_id`` makes writes idempotent (retries, spool replays)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    unit_id: Mapped[str] = mapped_column(String(UNIT))
    metric: Mapped[str] = mapped_column(String(KEY))
    value: Mapped[float] = mapped_column(Float)
    occurred_at: Mapped[datetime]
    trace_id: Mapped[str] = mapped_column(String(TRACE_ID), default="")
    span_id: Mapped[str] = mapped_column(String(SPAN_ID), default="")
    seq: Mapped[int | None] = mapped_column(BigInteger)
    """Place in the order of ingestion, as for exposures (``id`` is not: on SQLite a deleted
    highest id is reused)."""

    # Led by the unit and covering the analysis query on PostgreSQL (migrations 0005, 0006): the
    # events come in unit order from the index alone and merge with the exposures' primary key.
    __table_args__ = (
        Index(
            "ix_events_unit_metric_time",
            "unit_id",
            "metric",
            "occurred_at",
            postgresql_include=["value", "seq"],
        ),
        Index("ix_events_seq", "seq", postgresql_include=["unit_id", "metric"]),
    )


class DecisionRow(Base):
    """The audit trail: every decision, automatic or manual, with the numbers behind it."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    experiment_key: Mapped[str] = mapped_column(ForeignKey("experiments.key"))
    action: Mapped[str] = mapped_column(String(32))
    arm_key: Mapped[str | None] = mapped_column(String(KEY))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    config_checksum: Mapped[str] = mapped_column(String(CHECKSUM))
    snapshot: Mapped[dict[str, Any]]
    decided_at: Mapped[datetime]
    look: Mapped[int | None] = mapped_column(Integer)
    """The worker's look number (1, 2, ...); NULL for manual actions. Unique per experiment, so
    two workers racing on the same look cannot both record (and act on) it."""

    __table_args__ = (
        Index("ix_decisions_experiment_time", "experiment_key", "decided_at"),
        UniqueConstraint("experiment_key", "look", name="uq_decisions_experiment_look"),
    )


class AuditRow(Base):
    """Operational actions that are not about one experiment: erasures, retention runs.

    ``detail`` never holds a unit id: an erasure is recorded by what was erased, not whose.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]]
    at: Mapped[datetime]


class OutboxRow(Base):
    """Changes to external systems that decisions make (MLflow alias moves), written in the
    decision's transaction and deleted once a dispatcher has carried them out
    (:class:`abkit.ports.OutboxItem`). Items with the same ``key`` go one at a time, by ``id``."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    experiment_key: Mapped[str] = mapped_column(ForeignKey("experiments.key"))
    decision_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("decisions.id")
    )
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(256))
    intent: Mapped[dict[str, Any]]
    observed: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (Index("ix_outbox_experiment_key", "experiment_key"),)


class ModelVersionRow(Base):
    """The model registry: which version of each model is live (at most one per model)."""

    __tablename__ = "model_versions"

    model: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    experiment_key: Mapped[str | None] = mapped_column(String(KEY))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint(_in("status", MODEL_VERSION_STATUSES), name="status"),
        Index(
            "uq_model_versions_one_live",
            "model",
            unique=True,
            sqlite_where=text("status = 'live'"),
            postgresql_where=text("status = 'live'"),
        ),
    )


class SequenceRow(Base):
    """SQLite's ingestion counters (``exposures``, ``events``), advanced by triggers; PostgreSQL
    numbers rows from sequences and leaves this table empty."""

    __tablename__ = "abkit_sequences"

    name: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))


class WatermarkRow(Base):
    """How far an experiment's maintained statistics of one metric definition have read: the
    totals up to ``exposure_seq``/``event_seq`` (every look), the per-day rows up to
    ``dated_exposure_seq``/``dated_event_seq`` (when the series is asked for).

    ``metric_key`` identifies the definition (:func:`abkit.core.increments.metric_key`); a changed
    definition is a new key, computed from the start. ``version`` changes with every write, so
    two writers cannot both apply their increments to the same state.
    """

    __tablename__ = "analysis_watermarks"

    experiment_key: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    metric_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    metric: Mapped[dict[str, Any] | None]
    exposure_seq: Mapped[int] = mapped_column(BigInteger)
    event_seq: Mapped[int] = mapped_column(BigInteger)
    dated_exposure_seq: Mapped[int] = mapped_column(BigInteger)
    dated_event_seq: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class AnalysisDayRow(Base):
    """Maintained sufficient statistics, as changes per (arm, UTC day): summed over days they
    are the look's totals, accumulated they are the chart's series. ``n`` counts units first
    exposed that day, the sums change on the days a unit's value changed; the CUPED terms sit
    on the unit's exposure day (only their totals mean anything); ``events`` counts attributed
    events (:class:`abkit.core.increments.DayChange`). The row with an empty ``day`` per arm
    holds what the totals gained since the per-day rows' watermark."""

    __tablename__ = "analysis_days"

    experiment_key: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    metric_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    arm_key: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    s: Mapped[float] = mapped_column(Float)
    ss: Mapped[float] = mapped_column(Float)
    xs: Mapped[float] = mapped_column(Float)
    xss: Mapped[float] = mapped_column(Float)
    xys: Mapped[float] = mapped_column(Float)
    ds: Mapped[float] = mapped_column(Float)
    dss: Mapped[float] = mapped_column(Float)
    nds: Mapped[float] = mapped_column(Float)
    events: Mapped[int] = mapped_column(BigInteger)
