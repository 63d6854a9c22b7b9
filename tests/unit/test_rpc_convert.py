"""The serialized replies of ResponseCache are exactly what protobuf would build field by field."""

from __future__ import annotations

from abkit.core.assignment import Assignment
from abkit.core.model import Reason
from abkit.rpc import convert
from abkit.v1 import assignment_pb2 as pb

CONTROL = Assignment("exp", "control", "v1", Reason.SPLIT)
TREATMENT = Assignment("exp", "treatment", "v2", Reason.SPLIT)
# Long enough that its serialized entry needs a two-byte length prefix.
LONG = Assignment("e" * 100, "a" * 50, "m" * 60, Reason.OVERRIDE)
MISS = Assignment("other", "control", "v1", Reason.TARGETING_MISS)


def reference(results: list[list[Assignment]]) -> bytes:
    return pb.AssignBatchResponse(
        responses=[convert.assign_response(answers) for answers in results]
    ).SerializeToString()


def test_batch_bytes_equal_the_message_protobuf_builds() -> None:
    cache = convert.ResponseCache()
    results = [[CONTROL], [TREATMENT], [CONTROL], [LONG], [], [CONTROL, MISS], [LONG, TREATMENT]]
    for _ in range(2):  # cold, then every entry from the cache
        wire = cache.batch_response(results)
        assert wire == reference(results)
        parsed = pb.AssignBatchResponse.FromString(wire)
        assert [[a.arm_key for a in r.assignments] for r in parsed.responses] == [
            [a.arm_key for a in answers] for answers in results
        ]
        assert parsed.responses[3].assignments[0].reason == pb.REASON_OVERRIDE


def test_single_reply_bytes_and_an_empty_batch() -> None:
    cache = convert.ResponseCache()
    for answers in ([CONTROL], [CONTROL, MISS], []):
        assert cache.response(answers) == convert.assign_response(answers).SerializeToString()
    assert cache.batch_response([]) == b""
    assert pb.AssignBatchResponse.FromString(b"").responses == []


def test_an_equal_answer_from_a_new_config_is_not_mistaken_for_the_cached_one() -> None:
    cache = convert.ResponseCache()
    cache.batch_response([[CONTROL]])
    replaced = Assignment("exp", "control", "v9", Reason.SPLIT)  # new object, new version
    reply = pb.AssignBatchResponse.FromString(cache.batch_response([[replaced]]))
    assert reply.responses[0].assignments[0].model_version == "v9"


def test_the_cache_stays_bounded() -> None:
    cache = convert.ResponseCache(limit=4)
    answers = [[Assignment("exp", f"arm{i}", f"v{i}", Reason.SPLIT)] for i in range(20)]
    for a in answers:
        cache.batch_response([a])
    assert len(cache._entries) <= 4
    assert cache.batch_response(answers) == reference(answers)


def test_wire_passes_bytes_through_and_serializes_messages() -> None:
    message = pb.TrackResponse(event_id="e-1")
    assert convert.wire(message) == message.SerializeToString()
    assert convert.wire(b"\x0a\x00") == b"\x0a\x00"
