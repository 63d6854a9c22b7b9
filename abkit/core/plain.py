"""Plain calls: ``Assign`` and ``AssignBatch`` calls whose units are all the common case.

Most batches a serving tier sends are a list of unit ids for one experiment (or one list of
experiments), without attributes; most single calls are one such unit. For those, the per-unit
work of the general path -- a protobuf message per unit, a request tuple, the checks, a call of
the experiment's closure, a row string -- costs more than the assignment itself (BENCHMARKS.md,
the gRPC profile). Here the same answers and rows come in two steps, each in C
(``abkit/core/_speedups.c``) when it is built:

* :func:`read_plain_batch` (:func:`read_plain_unit` for ``Assign``) reads the unit ids and the
  shared keys straight from the request's wire bytes -- or says ``None`` (an attribute
  anywhere, keys that differ between units, a unit id that is not printable ASCII of an
  acceptable length, anything unexpected): the caller then takes the general path, which
  accepts the request or names its problem. Without the extension it always says ``None``.
* :func:`assign_plain` answers every unit for one experiment from its
  :attr:`~abkit.core.assignment.CompiledExperiment.plain` plan and encodes the exposure rows of
  those randomized and not logged recently. :func:`assign_plain_python` is the reference: the
  experiment's own closure, unit by unit (tests hold the two equal).

Pure: no I/O, no clock (the rows' time and trace come in as ``tail``).
"""

from __future__ import annotations

from collections.abc import Callable

from abkit.core.assignment import Assignment, CompiledExperiment
from abkit.core.limits import MAX_UNIT_ID_BYTES
from abkit.core.native import speedups
from abkit.core.recent import RecentMemory
from abkit.core.rows import escape

_NO_ATTRIBUTES: dict[str, str] = {}

PlainAnswers = tuple[list[Assignment], str, list[str]]
"""``(answers, rows, units)``: every unit's answer in order, the exposure rows (COPY text), and
the units those rows are for (to remember once the rows are recorded)."""


def read_plain_unit(data: bytes) -> tuple[str, tuple[str, ...]] | None:
    """The unit id and experiment keys of this serialized ``AssignRequest`` when it is plain;
    else ``None``."""
    if speedups is None:  # pragma: no cover -- the test suite requires the native build
        return None
    return speedups.read_plain_unit(data, MAX_UNIT_ID_BYTES)


def read_plain_batch(data: bytes) -> tuple[list[str], tuple[str, ...]] | None:
    """The unit ids and the experiment keys they all share, when every unit of this serialized
    ``AssignBatchRequest`` is plain; else ``None``."""
    if speedups is None:  # pragma: no cover -- the test suite requires the native build
        return None
    return speedups.read_plain_batch(data, MAX_UNIT_ID_BYTES)


def assign_plain(
    units: list[str],
    experiment: CompiledExperiment,
    logged: RecentMemory,
    tail: str,
    stored_id: Callable[[str], str] | None = None,
) -> PlainAnswers:
    """Answer ``units`` (no attributes) for ``experiment``; the rows of the randomized ones not in
    ``logged``: the answer's row head, ``tail`` (:func:`abkit.core.rows.row_tail`) and the
    escaped ``stored_id(unit)`` (the unit itself when ``None``). ``logged`` is only read."""
    if speedups is not None and type(logged) is speedups.RecentKeys:
        return speedups.assign_plain(
            units, experiment.plain, logged, experiment.key, tail, stored_id
        )
    return assign_plain_python(units, experiment, logged, tail, stored_id)  # pragma: no cover


def assign_plain_python(
    units: list[str],
    experiment: CompiledExperiment,
    logged: RecentMemory,
    tail: str,
    stored_id: Callable[[str], str] | None = None,
) -> PlainAnswers:
    """:func:`assign_plain` through the experiment's closure, unit by unit: the reference."""
    assign, key = experiment.assign, experiment.key
    answers = [assign(unit, _NO_ATTRIBUTES) for unit in units]
    lines: list[str] = []
    new: list[str] = []
    for unit, answer in zip(units, answers, strict=True):
        if answer.in_experiment and (key, unit) not in logged:
            stored = unit if stored_id is None else stored_id(unit)
            lines.append(f"{answer.row_head}{tail}{escape(stored)}\n")
            new.append(unit)
    return answers, "".join(lines), new
