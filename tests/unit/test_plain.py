"""Plain batches (abkit.core.plain): the C reader agrees with protobuf, and the C assignment with
the experiment's own closure, answer for answer and row for row."""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abkit.core.assignment import CompiledExperiment
from abkit.core.limits import MAX_UNIT_ID_BYTES
from abkit.core.model import Arm, Experiment, ExperimentStatus, Holdout, LayerSegment
from abkit.core.native import speedups
from abkit.core.plain import (
    assign_plain,
    assign_plain_python,
    read_plain_batch,
    read_plain_unit,
)
from abkit.core.recent import TwoGenerations, recent_keys
from abkit.core.targeting import parse_condition
from abkit.v1 import assignment_pb2 as pb

TAIL = "2026-12-03 12:00:00+00:00\t0af7651916cd43dd8448eb211c80319c\tb7ad6b7169203331\t"


def batch(*requests: pb.AssignRequest) -> bytes:
    return pb.AssignBatchRequest(requests=list(requests)).SerializeToString()


def test_reads_unit_ids_and_shared_keys() -> None:
    data = batch(*(pb.AssignRequest(unit_id=f"u{i}", experiment_keys=["a", "b"]) for i in range(3)))
    assert read_plain_batch(data) == (["u0", "u1", "u2"], ("a", "b"))
    assert read_plain_batch(batch(pb.AssignRequest(unit_id="u"))) == (["u"], ())


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([], id="no units"),
        pytest.param([pb.AssignRequest(unit_id="")], id="empty unit id"),
        pytest.param([pb.AssignRequest(unit_id="x" * (MAX_UNIT_ID_BYTES + 1))], id="too long"),
        pytest.param([pb.AssignRequest(unit_id="caf\u00e9")], id="not ascii"),
        pytest.param([pb.AssignRequest(unit_id="a\tb")], id="control character"),
        pytest.param(
            [
                pb.AssignRequest(
                    unit_id="u", attributes={"country": pb.AttributeValue(string_value="US")}
                )
            ],
            id="attributes",
        ),
        pytest.param(
            [
                pb.AssignRequest(unit_id="u1", experiment_keys=["a"]),
                pb.AssignRequest(unit_id="u2", experiment_keys=["b"]),
            ],
            id="keys differ",
        ),
        pytest.param(
            [
                pb.AssignRequest(unit_id="u1", experiment_keys=["a"]),
                pb.AssignRequest(unit_id="u2", experiment_keys=["a", "a"]),
            ],
            id="key counts differ",
        ),
        pytest.param([pb.AssignRequest(unit_id="u", experiment_keys=["k"] * 101)], id="101 keys"),
    ],
)
def test_anything_else_takes_the_protobuf_path(requests: list[pb.AssignRequest]) -> None:
    assert read_plain_batch(batch(*requests)) is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x0a\x05\x0a\x01u", id="truncated unit"),
        pytest.param(b"\x0a\x03\x0a\x01u\x10\x01", id="unknown top-level field"),
        pytest.param(b"\x0a\x05\x0a\x01u\x20\x01", id="unknown unit field"),
        pytest.param(b"\x0a\x06\x0a\x01u\x0a\x01v", id="unit id twice"),
        pytest.param(b"\x0a\x07\x0a\x01u\x1a\x02\xc3\x28", id="key not utf-8"),
        pytest.param(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", id="varint too long"),
    ],
)
def test_malformed_or_unexpected_bytes_are_not_plain(data: bytes) -> None:
    assert read_plain_batch(data) is None


_unit_ids = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=6)
_requests = st.lists(
    st.builds(
        pb.AssignRequest,
        unit_id=_unit_ids,
        experiment_keys=st.sampled_from([[], ["a"], ["a", "b"], ["b"]]),
        attributes=st.sampled_from([{}, {"x": pb.AttributeValue(bool_value=True)}]),
    ),
    max_size=8,
)


@given(_requests)
def test_reader_agrees_with_protobuf(requests: list[pb.AssignRequest]) -> None:
    data = batch(*requests)
    parsed = pb.AssignBatchRequest.FromString(data).requests
    plain = bool(parsed) and all(
        0 < len(r.unit_id) <= MAX_UNIT_ID_BYTES
        and r.unit_id.isascii()
        and r.unit_id.isprintable()
        and not r.attributes
        and list(r.experiment_keys) == list(parsed[0].experiment_keys)
        for r in parsed
    )
    read = read_plain_batch(data)
    if not plain:
        assert read is None
    else:
        assert read == ([r.unit_id for r in parsed], tuple(parsed[0].experiment_keys))


@given(_requests)
def test_unit_reader_agrees_with_protobuf(requests: list[pb.AssignRequest]) -> None:
    for request in requests:
        data = request.SerializeToString()
        parsed = pb.AssignRequest.FromString(data)
        plain = (
            0 < len(parsed.unit_id) <= MAX_UNIT_ID_BYTES
            and parsed.unit_id.isascii()
            and parsed.unit_id.isprintable()
            and not parsed.attributes
        )
        expected = (parsed.unit_id, tuple(parsed.experiment_keys)) if plain else None
        assert read_plain_unit(data) == expected


def test_unit_reader_refuses_what_is_not_plain() -> None:
    assert read_plain_unit(b"") is None  # no unit id
    assert read_plain_unit(b"\x0a\x01u\x1a\x02\xc3\x28") is None  # key not UTF-8
    assert read_plain_unit(b"\x0a\x05u") is None  # truncated
    assert read_plain_unit(
        pb.AssignRequest(unit_id="u", experiment_keys=["a"]).SerializeToString()
    ) == (
        "u",
        ("a",),
    )


# --- assign_plain against the closure --------------------------------------------------------

_versions = st.sampled_from(["v1", "v2", "mod\u00e8le", "back\\slash", "tab\there"])


@st.composite
def experiments(draw: st.DrawFn) -> CompiledExperiment:
    n = draw(st.integers(2, 4))
    weights = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    arms = tuple(
        Arm(f"arm{i}", draw(_versions) + str(i), w / sum(weights), control=i == 0)
        for i, w in enumerate(weights)
    )
    status = draw(st.sampled_from([*ExperimentStatus, ExperimentStatus.RUNNING] * 2))
    rollout = "arm1" if status is ExperimentStatus.CONCLUDED else None
    layer = draw(
        st.none() | st.sampled_from([LayerSegment("l", 0.0, 0.5), LayerSegment("l", 0.3, 1.0)])
    )
    targeting = draw(
        st.none()
        | st.sampled_from(
            [
                parse_condition({"attr": "country", "eq": "US"}),
                parse_condition({"attr": "beta", "exists": False}),
            ]
        )
    )
    experiment = Experiment(
        "exp",
        arms,
        status=status,
        rollout_arm=rollout,
        coverage=draw(st.sampled_from([1.0, 0.5, 0.0, 0.999])),
        layer=layer,
        holdout=draw(st.none() | st.sampled_from([Holdout("h", 0.2), Holdout("h", 0.0)])),
        targeting=targeting,
        overrides=draw(st.sampled_from([{}, {"u1": "arm1", "u\\7": "arm0"}])),
        salt=draw(st.sampled_from(["", "s1", "s\u00e9"])),
    )
    return CompiledExperiment(experiment)


_units = st.lists(
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), min_size=1, max_size=5)
    | st.sampled_from(["u1", "u\\7", "u2", "u3"]),
    max_size=30,
)


def _pseudonym(unit: str) -> str:
    return hmac.new(b"k", unit.encode(), "sha256").hexdigest()


@settings(max_examples=300)
@given(experiments(), _units, st.lists(st.sampled_from(["u1", "u2", "u3", "x"])), st.booleans())
def test_assign_plain_is_the_closure_unit_by_unit(
    experiment: CompiledExperiment, units: list[str], seen: list[str], pseudonymize: bool
) -> None:
    logged = recent_keys(1000)
    logged.update(("exp", u) for u in seen)
    logged.update(("other", u) for u in units)  # another experiment's pairs never count
    twin = TwoGenerations(1000)
    twin.update(("exp", u) for u in seen)
    stored = _pseudonym if pseudonymize else None
    before = len(logged)
    native = assign_plain(units, experiment, logged, TAIL, stored)
    reference = assign_plain_python(units, experiment, twin, TAIL, stored)
    assert native == reference
    assert all(a is b for a, b in zip(native[0], reference[0], strict=True))  # the shared answers
    assert len(logged) == before  # only read


def test_every_step_of_the_order_is_reached() -> None:
    """Overrides, holdout, layer, coverage and the split all answer some of these units, and
    rows come only from the split, escaped as COPY text."""
    compiled = CompiledExperiment(
        Experiment(
            "exp",
            (Arm("control", "v1", 0.5, control=True), Arm("treatment", "v\t2", 0.5)),
            status=ExperimentStatus.RUNNING,
            overrides={"qa": "treatment"},
            holdout=Holdout("h", 0.2),
            layer=LayerSegment("l", 0.0, 0.6),
            coverage=0.7,
        )
    )
    units = ["qa", *(f"u\\{i}" for i in range(400))]
    answers, text, rows = assign_plain(units, compiled, recent_keys(10), TAIL)
    assert {a.reason.value for a in answers} == {
        "OVERRIDE",
        "HOLDOUT",
        "NOT_IN_LAYER",
        "NOT_IN_COVERAGE",
        "SPLIT",
    }
    split = [u for u, a in zip(units, answers, strict=True) if a.in_experiment]
    assert rows == split
    lines = text.splitlines()
    assert len(lines) == len(split)
    assert all(
        line.endswith("\t" + u.replace("\\", "\\\\")) for line, u in zip(lines, split, strict=True)
    )
    assert any("\tv\\t2\t" in line for line in lines)


def test_bad_arguments_are_type_errors() -> None:
    arms = (Arm("a", "v1", 0.5, control=True), Arm("b", "v2", 0.5))
    compiled = CompiledExperiment(Experiment("exp", arms, status=ExperimentStatus.RUNNING))
    with pytest.raises(TypeError, match="assign_plain takes"):
        speedups.assign_plain(["u"], ("not", "a", "plan"), recent_keys(4), "exp", TAIL, None)
    with pytest.raises(TypeError, match="unit id must be str"):
        speedups.assign_plain([1], compiled.plain, recent_keys(4), "exp", TAIL, None)
    with pytest.raises(TypeError, match="must return a str"):
        speedups.assign_plain(["u"], compiled.plain, recent_keys(4), "exp", TAIL, lambda u: 1)
