"""Exposures and events as PostgreSQL ``COPY ... FROM STDIN`` text, built a batch at a time.

psycopg's ``Copy.write_row`` formats every value of every row through its dumpers; for the
exposure and event writers that was a third of the gRPC process's GIL time under load
(BENCHMARKS.md). These rows are mostly repetition: the experiment, arm, model version and
config checksum of an exposure come from a handful of answers, and a request's rows share one
timestamp and one trace. So a batch is encoded with those parts formatted once per distinct
value (a dict per batch), and only the unit id (and, for events, the value) per row.

Text format (PostgreSQL, "COPY", File Formats): columns separated by a tab, rows by a newline,
and in values a backslash, tab, newline or carriage return written as ``\\\\``, ``\\t``, ``\\n``,
``\\r``. Keys, metric names, checksums and trace ids cannot hold those characters (they are
validated); unit ids, event ids and model versions are escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from abkit.core.assignment import Exposure
from abkit.core.model import Event

EXPOSURE_COLUMNS = (
    "experiment_key", "arm_key", "model_version", "config_checksum", "exposed_at", "trace_id",
    "span_id", "unit_id",
)  # fmt: skip
"""The column order of :func:`exposure_text`: everything a row shares first, the unit last."""
EVENT_COLUMNS = (
    "occurred_at", "trace_id", "span_id", "metric", "value", "event_id", "unit_id",
)  # fmt: skip
"""The column order of :func:`event_text`."""

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def escape(value: str) -> str:
    """A string as a COPY text value."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_ESCAPES)
    return value


def timestamp(value: datetime) -> str:
    """A timezone-aware time as PostgreSQL reads a ``timestamptz`` (ISO 8601)."""
    return value.isoformat(sep=" ")


def exposure_text(exposures: Sequence[Exposure]) -> str:
    """``exposures`` as COPY text rows in :data:`EXPOSURE_COLUMNS` order."""
    heads: dict[tuple[str, str, str, str], str] = {}
    tails: dict[tuple[datetime, str, str], str] = {}
    lines = []
    for experiment_key, unit_id, arm_key, version, checksum, at, trace_id, span_id in exposures:
        head = heads.get((experiment_key, arm_key, version, checksum))
        if head is None:
            head = heads[experiment_key, arm_key, version, checksum] = (
                f"{experiment_key}\t{arm_key}\t{escape(version)}\t{checksum}\t"
            )
        tail = tails.get((at, trace_id, span_id))
        if tail is None:
            tail = tails[at, trace_id, span_id] = f"{timestamp(at)}\t{trace_id}\t{span_id}\t"
        lines.append(f"{head}{tail}{escape(unit_id)}\n")
    return "".join(lines)


def event_text(events: Sequence[Event]) -> str:
    """``events`` as COPY text rows in :data:`EVENT_COLUMNS` order."""
    tails: dict[tuple[datetime, str, str], str] = {}
    lines = []
    for event_id, unit_id, metric, value, at, trace_id, span_id in events:
        tail = tails.get((at, trace_id, span_id))
        if tail is None:
            tail = tails[at, trace_id, span_id] = f"{timestamp(at)}\t{trace_id}\t{span_id}\t"
        # repr() of a finite float reads back exactly (values are validated finite).
        lines.append(f"{tail}{metric}\t{value!r}\t{escape(event_id)}\t{escape(unit_id)}\n")
    return "".join(lines)
