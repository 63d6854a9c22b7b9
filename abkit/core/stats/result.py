"""What a test returns: an estimate, an interval, evidence, and a status that says if it is usable.

Expected statistical states (too few units, no variance, a zero baseline for a relative lift, a
confidence sequence whose running intersection became empty) are *values* of
:class:`TestStatus`, never exceptions: a worker looking at an experiment one minute after launch
must get an answer it can store and show, not a traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class TestStatus(StrEnum):
    """Whether a result can be acted on. Only ``OK`` carries evidence."""

    __test__ = False  # not a pytest test class despite the name

    OK = "ok"
    NOT_ENOUGH_DATA = "not_enough_data"  # an arm has fewer than 2 units
    ZERO_VARIANCE = "zero_variance"  # the estimate has no sampling variance (all values equal)
    ZERO_BASELINE = "zero_baseline"  # relative lift with control mean 0, or a ratio over 0
    # The running intersection of confidence sequences is empty: with probability <= alpha this
    # happens by chance, otherwise the model is wrong (e.g. an effect that changes over time).
    # The monitor keeps the crossed bounds visible instead of silently resetting them.
    EMPTY_CONFIDENCE_SEQUENCE = "empty_confidence_sequence"


class Method(StrEnum):
    """Which procedure produced a result (shown to analysts so they can recompute it)."""

    WELCH_T = "welch_t"  # difference in means, Welch-Satterthwaite df
    TWO_PROPORTION_Z = "two_proportion_z"  # binary metric: pooled-SE z test, Wald CI
    CUPED_WELCH_T = "cuped_welch_t"  # CUPED-adjusted difference, Welch df on adjusted variances
    DELTA_Z = "delta_z"  # relative lift or ratio metric: delta-method normal interval
    MSPRT = "msprt"  # mixture SPRT / asymptotic confidence sequence
    GROUP_SEQUENTIAL = "group_sequential"  # Lan-DeMets spending boundaries, repeated CI


@dataclass(frozen=True, slots=True)
class TestResult:
    """The outcome of one comparison of treatment against control.

    ``estimate`` is treatment minus control (or the relative lift ``treatment/control - 1`` when
    requested). ``[ci_low, ci_high]`` is a confidence interval (fixed horizon) or confidence
    sequence (always valid). ``e_value`` is ``None`` for fixed-horizon tests. When ``status`` is
    not ``OK`` the result is uninformative: ``p_value == 1``, the interval is infinite and
    ``estimate`` is the raw difference when it is defined, NaN otherwise.
    """

    __test__ = False  # not a pytest test class despite the name

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    e_value: float | None
    status: TestStatus
    std_error: float
    method: Method

    @property
    def ok(self) -> bool:
        return self.status is TestStatus.OK

    def significant(self, alpha: float) -> bool:
        """True when the result is usable and its p-value is below ``alpha``."""
        return self.ok and self.p_value < alpha


def uninformative(
    status: TestStatus, method: Method, *, estimate: float = math.nan, sequential: bool = False
) -> TestResult:
    """The result for an expected state in which there is no evidence to report."""
    return TestResult(
        estimate=estimate,
        ci_low=-math.inf,
        ci_high=math.inf,
        p_value=1.0,
        e_value=1.0 if sequential else None,
        status=status,
        std_error=math.nan,
        method=method,
    )
