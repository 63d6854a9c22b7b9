"""proto <-> core conversion. Pure functions of messages; no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from abkit.core.assignment import Assignment
from abkit.core.model import Event, Reason
from abkit.core.targeting import AttributeValue
from abkit.errors import ValidationError
from abkit.services import TrackInput, UnitRequest
from abkit.v1 import assignment_pb2 as pb

_REASONS = {reason: getattr(pb, f"REASON_{reason.value}") for reason in Reason}
REASON_FROM_PROTO = {v: k for k, v in _REASONS.items()}


def attributes_from_proto(attributes: Any, field: str) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for name, value in attributes.items():
        kind = value.WhichOneof("kind")
        if kind is None:
            raise ValidationError(
                f"{field}[{name[:64]!r}]",
                "has no value; set one of string_value, number_value, bool_value",
            )
        out[name] = getattr(value, kind)
    return out


def unit_request_from_proto(request: Any, field: str = "") -> UnitRequest:
    return UnitRequest(
        unit_id=request.unit_id,
        attributes=attributes_from_proto(request.attributes, f"{field}attributes"),
        experiment_keys=tuple(request.experiment_keys),
    )


def assignment_to_proto(a: Assignment) -> Any:
    return pb.Assignment(
        experiment_key=a.experiment_key,
        arm_key=a.arm_key,
        model_version=a.model_version,
        reason=_REASONS[a.reason],
        in_experiment=a.in_experiment,
    )


def assign_response(assignments: list[Assignment]) -> Any:
    return pb.AssignResponse(assignments=[assignment_to_proto(a) for a in assignments])


def track_input_from_proto(request: Any, field: str = "") -> TrackInput:
    occurred_at: datetime | None = None
    if request.HasField("occurred_at"):
        ts = request.occurred_at
        if not (0 <= ts.nanos < 1_000_000_000):
            raise ValidationError(f"{field}occurred_at", "nanos must be in [0, 1e9)")
        try:
            occurred_at = datetime.fromtimestamp(ts.seconds, UTC).replace(
                microsecond=ts.nanos // 1000
            )
        except (OverflowError, OSError, ValueError):
            raise ValidationError(f"{field}occurred_at", "is not a representable time") from None
    return TrackInput(
        unit_id=request.unit_id,
        metric=request.metric,
        value=request.value if request.HasField("value") else 1.0,
        occurred_at=occurred_at,
        event_id=request.event_id,
    )


def event_ids(events: list[Event]) -> list[str]:
    return [e.event_id for e in events]
