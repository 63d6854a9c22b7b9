"""Several arms and several metrics: corrections for looking at many comparisons at once.

* p-values (fixed horizon or always-valid) -- Holm's step-down procedure (Holm 1979, Scand. J.
  Statist. 6), controlling the family-wise error rate, or Benjamini & Hochberg (1995, JRSS B 57)
  step-up, controlling the false discovery rate. BH goes through statsmodels ``multipletests``;
  Holm is computed here (adjusted ``p_(i) = max_{j<=i} min(1, (m - j + 1) p_(j))``) because
  statsmodels' Holm branch calls ``gc.collect()`` on every call (~40 ms in a loaded process, the
  whole budget of a look). The tests check both against ``multipletests``. Holm and BH are valid for
  always-valid p-values too: at any stopping time each running-min p-value is a valid p-value.
* confidence sequences -- Bonferroni: run each of ``m`` comparisons at ``alpha / m``. The union
  bound needs no independence, so all ``m`` sequences cover simultaneously, at all times, with
  probability ``>= 1 - alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from abkit.core.stats.fixed_horizon import check_alpha
from abkit.errors import ValidationError

_METHODS = ("bh", "holm")


@dataclass(frozen=True, slots=True)
class Adjusted:
    """Adjusted p-values and rejection decisions, in the order of the input."""

    p_values: tuple[float, ...]
    reject: tuple[bool, ...]
    method: str
    alpha: float


def adjust_p_values(
    p_values: Sequence[float], *, method: str = "holm", alpha: float = 0.05
) -> Adjusted:
    """Holm (``"holm"``, FWER) or Benjamini-Hochberg (``"bh"``, FDR) adjusted p-values."""
    if method not in _METHODS:
        raise ValidationError("method", f"must be one of {sorted(_METHODS)}, got {method!r}")
    alpha = check_alpha(alpha)
    values = [float(p) for p in p_values]
    if not values:
        return Adjusted((), (), method, alpha)
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values):
        raise ValidationError("p_values", "every p-value must be in [0, 1]")
    if method == "holm":
        adjusted = _holm(np.asarray(values))
        reject = adjusted <= alpha
    else:
        # Imported here: statsmodels.stats.multitest costs ~0.9 s to import, which every process
        # that imports the stats package (the CLI, the gRPC server) would otherwise pay.
        from statsmodels.stats.multitest import multipletests

        reject, adjusted, _, _ = multipletests(np.asarray(values), alpha=alpha, method="fdr_bh")
    return Adjusted(
        tuple(float(p) for p in adjusted), tuple(bool(r) for r in reject), method, alpha
    )


def _holm(p: NDArray[np.float64]) -> NDArray[np.float64]:
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(m, 0, -1)))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


def bonferroni_alpha(alpha: float, comparisons: int) -> float:
    """Per-comparison level for ``comparisons`` simultaneous confidence sequences or tests."""
    alpha = check_alpha(alpha)
    if isinstance(comparisons, bool) or not isinstance(comparisons, int) or comparisons < 1:
        raise ValidationError("comparisons", f"must be a positive integer, got {comparisons!r}")
    return alpha / comparisons
