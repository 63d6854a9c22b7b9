"""Sample ratio mismatch (SRM): do the arms' unit counts match the configured weights?

An SRM means the assignment or the logging is broken (a crashing arm, a bot filter hitting one
model version, a redirect losing units), and then no metric comparison can be trusted. It is an
expected state of the world, so it is reported as a value on the result, never raised.

* :func:`srm_test` -- Pearson's chi-square goodness-of-fit test of the counts against the
  weights, ``X^2 = sum((o - e)^2 / e)`` with ``k - 1`` degrees of freedom. Valid for one look.
* :func:`sequential_srm_test` -- the anytime-valid test of Lindon & Malek (2022), "Anytime-valid
  inference for multinomial count data" (NeurIPS 2022): a Dirichlet-multinomial Bayes factor
  against the null multinomial. With prior ``Dirichlet(k * theta0)`` centred on the null
  proportions ``theta0`` (``k`` = ``concentration``) and cumulative counts ``x`` (``n`` units):

      log BF = log B(k theta0 + x) - log B(k theta0) - sum_i x_i log theta0_i

  where ``B(a) = prod Gamma(a_i) / Gamma(sum a_i)``. The Bayes factor of a simple null against a
  mixture is a nonnegative martingale under the null, so ``min(1, 1/BF)`` is valid at any look
  and its running minimum (``previous_p_value``) is an anytime-valid p-value (Ville's inequality).
  It depends on the counts only, so the worker can recompute it from SQL at every look.

``mismatch`` flags ``p_value < threshold``; the default threshold 0.001 is the convention of
large experimentation platforms (e.g. GrowthBook, Optimizely, Microsoft ExP): an SRM alarm must
be rare under H0 because it halts the experiment, and real SRMs produce far smaller p-values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from abkit.core.stats.result import TestStatus
from abkit.errors import ValidationError

SRM_THRESHOLD = 0.001


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Outcome of a sample-ratio check. ``e_value`` is ``None`` for the chi-square test."""

    p_value: float
    mismatch: bool
    status: TestStatus
    statistic: float  # Pearson X^2, or log Bayes factor for the sequential test
    e_value: float | None = None
    expected: tuple[float, ...] = ()


def _inputs(
    counts: Sequence[int], weights: Sequence[float], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    if len(counts) != len(weights) or len(counts) < 2:
        raise ValidationError("weights", "need one weight per arm and at least two arms")
    clean = []
    for i, c in enumerate(counts):
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 0:
            raise ValidationError(f"counts[{i}]", f"must be a non-negative integer, got {c!r}")
        clean.append(int(c))
    w = np.asarray(weights, dtype=float)
    if not np.all(np.isfinite(w)) or np.any(w < 0.0) or w.sum() <= 0.0:
        raise ValidationError("weights", "must be finite, >= 0, and not all 0")
    if not 0.0 < threshold < 1.0:
        raise ValidationError("threshold", f"must be in (0, 1), got {threshold!r}")
    return np.asarray(clean, dtype=float), w / w.sum()


def srm_test(
    counts: Sequence[int], weights: Sequence[float], *, threshold: float = SRM_THRESHOLD
) -> SrmResult:
    """Pearson chi-square test of ``counts`` against ``weights`` (normalised to proportions)."""
    x, theta = _inputs(counts, weights, threshold)
    n = float(x.sum())
    expected = tuple(float(e) for e in theta * n)
    if n == 0.0:
        return SrmResult(1.0, False, TestStatus.NOT_ENOUGH_DATA, 0.0, None, expected)
    live = theta > 0.0
    if np.any(x[~live] > 0.0):  # units in an arm that should get none: certainly broken
        return SrmResult(0.0, True, TestStatus.OK, math.inf, None, expected)
    e = theta[live] * n
    statistic = float(np.sum((x[live] - e) ** 2 / e))
    dof = int(live.sum()) - 1
    p_value = float(special.chdtrc(dof, statistic)) if dof > 0 else 1.0
    return SrmResult(p_value, p_value < threshold, TestStatus.OK, statistic, None, expected)


def _log_multivariate_beta(a: np.ndarray) -> float:
    return float(np.sum(special.gammaln(a)) - special.gammaln(np.sum(a)))


def sequential_srm_test(
    counts: Sequence[int],
    weights: Sequence[float],
    *,
    concentration: float = 100.0,
    threshold: float = SRM_THRESHOLD,
    previous_p_value: float = 1.0,
) -> SrmResult:
    """Lindon & Malek (2022) Dirichlet-multinomial e-value for the cumulative ``counts``.

    ``concentration`` is the prior's total pseudo-count ``k``: larger values centre the prior
    more tightly on the configured weights (more power against small mismatches, less against
    large ones). ``previous_p_value`` carries the running minimum from earlier looks.
    """
    if not (math.isfinite(concentration) and concentration > 0.0):
        raise ValidationError(
            "concentration", f"must be a finite number > 0, got {concentration!r}"
        )
    if not 0.0 < previous_p_value <= 1.0:
        raise ValidationError("previous_p_value", f"must be in (0, 1], got {previous_p_value!r}")
    x, theta = _inputs(counts, weights, threshold)
    expected = tuple(float(e) for e in theta * x.sum())
    live = theta > 0.0
    if np.any(x[~live] > 0.0):
        return SrmResult(0.0, True, TestStatus.OK, math.inf, math.inf, expected)
    if x.sum() == 0.0:
        return SrmResult(
            previous_p_value,
            previous_p_value < threshold,
            TestStatus.NOT_ENOUGH_DATA,
            0.0,
            1.0,
            expected,
        )
    prior = concentration * theta[live]
    observed = x[live]
    log_bf = (
        _log_multivariate_beta(prior + observed)
        - _log_multivariate_beta(prior)
        - float(np.sum(observed * np.log(theta[live])))
    )
    p_value = min(previous_p_value, math.exp(-log_bf) if log_bf > 0.0 else 1.0)
    return SrmResult(
        p_value, p_value < threshold, TestStatus.OK, log_bf, math.exp(min(log_bf, 709.0)), expected
    )
