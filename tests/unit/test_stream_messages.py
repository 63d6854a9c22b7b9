"""The stream's message format: what a loader accepts, and the reason it gives for the rest."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from abkit.core.model import Event, Exposure
from abkit.core.rows import RowKind, encode_events, encode_exposures
from abkit.infra.stream import MAX_MESSAGE_BYTES, PoisonMessage, decode, headers
from abkit.infra.stream_recorder import _messages

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TRACE, SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def exposure(unit: str, **changes: object) -> Exposure:
    values = dict(
        experiment_key="ranker-v2",
        unit_id=unit,
        arm_key="control",
        model_version="ranker-v1",
        config_checksum="abcdef0123456789",
        exposed_at=AT,
        trace_id=TRACE,
        span_id=SPAN,
    )
    values.update(changes)
    return Exposure(**values)  # type: ignore[arg-type]


def event(event_id: str, **changes: object) -> Event:
    values = dict(event_id=event_id, unit_id="u1", metric="conversion", value=1.0, occurred_at=AT)
    values.update(changes)
    return Event(**values)  # type: ignore[arg-type]


def message(kind: RowKind, text: str, rows: int) -> tuple[dict[str, str], bytes]:
    return headers(kind, rows, "server-1"), text.encode()


def test_a_good_message_decodes_to_its_rows() -> None:
    text = encode_exposures([exposure("u1"), exposure("u\\2 é")])
    decoded = decode(*message(RowKind.EXPOSURES, text, 2))
    assert (decoded.kind, decoded.rows, decoded.text) == (RowKind.EXPOSURES, 2, text)
    events = encode_events([event("e1"), event("e2", value=-2.5)])
    assert decode(*message(RowKind.EVENTS, events, 2)).rows == 2


def test_headers_name_the_schema_kind_rows_and_the_deduplication_id() -> None:
    assert headers(RowKind.EVENTS, 7, "abc-12") == {
        "Nats-Msg-Id": "abc-12",
        "Abkit-Schema": "1",
        "Abkit-Kind": "events",
        "Abkit-Rows": "7",
    }


def _poison(h: dict[str, str] | None, body: bytes) -> str:
    with pytest.raises(PoisonMessage) as caught:
        decode(h, body)
    return str(caught.value)


def test_each_kind_of_bad_message_is_refused_with_a_reason() -> None:
    good = encode_exposures([exposure("u1"), exposure("u2")])
    h = headers(RowKind.EXPOSURES, 2, "x")
    assert "unknown schema version '2'" in _poison({**h, "Abkit-Schema": "2"}, good.encode())
    assert "unknown schema version None" in _poison(None, good.encode())
    assert "unknown kind 'clicks'" in _poison({**h, "Abkit-Kind": "clicks"}, good.encode())
    assert "undecodable" in _poison(h, b"\xff\xfe garbage \x00")
    assert "undecodable" in _poison({**h, "Abkit-Rows": "two"}, good.encode())
    # Truncated at a row boundary: fewer rows than declared.
    first_row = good.split("\n")[0] + "\n"
    assert "1 rows in the body, 2 declared" in _poison(h, first_row.encode())
    # Truncated inside a row: the row is short of fields.
    assert "a row is invalid" in _poison(h, good[: len(good) - 30].encode())
    assert "fields, expected 8" in _poison(h, good[: len(good) - 30].encode())


def test_values_the_edge_would_refuse_are_refused_here_too() -> None:
    def refused(kind: RowKind, text: str) -> str:
        return _poison(headers(kind, 1, "x"), text.encode())

    nan = encode_events([event("e1")]).replace("\t1.0\t", "\tNaN\t")
    assert "value: must be a finite number" in refused(RowKind.EVENTS, nan)
    huge = encode_exposures([exposure("u" * 1_000_000)])
    assert "unit_id: must be at most 256 bytes" in refused(RowKind.EXPOSURES, huge)
    bad_metric = encode_events([event("e1", metric="Bad Metric")])
    assert "metric" in refused(RowKind.EVENTS, bad_metric)
    bad_id = encode_events([event("e 1")])
    assert "event_id" in refused(RowKind.EVENTS, bad_id)
    bad_trace = encode_exposures([exposure("u1", trace_id="zz")])
    assert "trace_id" in refused(RowKind.EXPOSURES, bad_trace)
    long_version = encode_exposures([exposure("u1", model_version="v" * 129)])
    assert "model_version" in refused(RowKind.EXPOSURES, long_version)
    no_zone = encode_events([event("e1")]).replace("+00:00", "")
    assert "time zone" in refused(RowKind.EVENTS, no_zone)


def test_a_group_becomes_one_message_per_kind_split_at_the_size_bound() -> None:
    row = encode_exposures([exposure("u1")])
    per_message = MAX_MESSAGE_BYTES // len(row)
    batch = [(RowKind.EXPOSURES, row, 1)] * (per_message + 5)
    batch.insert(3, (RowKind.EVENTS, encode_events([event("e1")]), 1))
    messages = _messages(batch)
    assert [(kind, rows) for kind, _, rows in messages] == [
        (RowKind.EXPOSURES, per_message),
        (RowKind.EXPOSURES, 5),
        (RowKind.EVENTS, 1),
    ]
    assert all(len(body) <= MAX_MESSAGE_BYTES for _, body, _ in messages)
    # Nothing lost or reordered: the bodies concatenate back to the rows, in order.
    assert (
        b"".join(body for kind, body, _ in messages if kind is RowKind.EXPOSURES)
        == (row * (per_message + 5)).encode()
    )
