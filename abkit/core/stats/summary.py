"""Per-arm sufficient statistics: the data contract between SQL and the statistics engine.

The database aggregates with ``GROUP BY arm`` and hands over, per arm and metric, the unit count
and the first and second moments; nothing here ever sees a row. Two shapes exist:

* :class:`ArmSummary` -- a per-unit metric ``Y`` (mean metrics and proportions), optionally with
  the moments of a pre-experiment covariate ``X`` for CUPED (``x_sum``, ``x_sum_sq``, ``xy_sum``).
* :class:`RatioSummary` -- a ratio metric ``sum(numerator) / sum(denominator)`` over units (e.g.
  clicks per session with the user as the randomisation unit), with the cross moment the delta
  method needs (Deng, Knoblich & Lu 2018).

Both validate on construction: a summary that could not come from real data (negative count,
NaN, a sum of squares below ``sum**2 / n``) raises :class:`~abkit.errors.ValidationError`. Data
that is real but unhelpful (``n < 2``, zero variance) is accepted; the tests report it as a status.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

from abkit.errors import ValidationError

# SQL engines add in a different order than Python does; a centred second moment that comes out
# slightly negative by cancellation is rounding, not bad data. Relative to the raw second moment.
_ROUNDING = 1e-9


def _count(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValidationError(field, f"must be an integer count of units, got {value!r}")
    count = int(value)
    if count < 0:
        raise ValidationError(field, f"must be >= 0, got {count}")
    return count


def _finite(value: float, field: str) -> float:
    # bool is an int and str converts with float(): neither is a statistic, both are caller bugs.
    if isinstance(value, bool | str | bytes):
        raise ValidationError(field, f"must be a finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(field, f"must be a finite number, got {value!r}") from exc
    if not math.isfinite(number):
        raise ValidationError(field, f"must be finite, got {number!r}")
    return number


def _centred(n: int, total: float, total_sq: float, field: str) -> float:
    """``sum((y - mean)**2)`` from raw moments, rejecting impossible inputs, clamping rounding."""
    if n == 0:
        if total != 0.0 or total_sq != 0.0:
            raise ValidationError(field, "must be 0 when n == 0 (no units, no sums)")
        return 0.0
    centred = total_sq - total * total / n
    if centred < -_ROUNDING * max(abs(total_sq), 1.0):
        raise ValidationError(
            field,
            f"is inconsistent with the sum: sum_sq={total_sq!r} < sum**2/n={total * total / n!r}; "
            "it must be the sum of squared per-unit values",
        )
    return max(centred, 0.0)


def _centred_cross(
    n: int, a: float, b: float, ab: float, saa: float, sbb: float, field: str
) -> float:
    if n == 0:
        if ab != 0.0:
            raise ValidationError(field, "must be 0 when n == 0 (no units, no sums)")
        return 0.0
    cross = ab - a * b / n
    # Cauchy-Schwarz: |S_ab| <= sqrt(S_aa * S_bb); anything beyond rounding is impossible data.
    bound = math.sqrt(saa * sbb)
    if abs(cross) > bound + _ROUNDING * max(abs(ab), abs(a * b / n), 1.0):
        raise ValidationError(
            field, "is inconsistent with the sums of squares (|covariance| > sd*sd)"
        )
    return max(-bound, min(bound, cross))


@dataclass(frozen=True, slots=True)
class ArmSummary:
    """One arm's sufficient statistics for a per-unit metric ``Y`` (and covariate ``X``).

    ``sum`` and ``sum_sq`` are ``sum(y_i)`` and ``sum(y_i**2)`` over the arm's ``n`` units. The
    ``x_*`` fields are the CUPED covariate moments ``sum(x_i)``, ``sum(x_i**2)``, ``sum(x_i*y_i)``
    (leave them 0 when there is no covariate). A binary metric is the same shape with
    ``sum == sum_sq == successes`` (see :meth:`from_proportion`).
    """

    n: int
    sum: float
    sum_sq: float
    x_sum: float = 0.0
    x_sum_sq: float = 0.0
    xy_sum: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _count(self.n, "n"))
        for name in ("sum", "sum_sq", "x_sum", "x_sum_sq", "xy_sum"):
            object.__setattr__(self, name, _finite(getattr(self, name), name))
        if self.sum_sq < 0.0 or self.x_sum_sq < 0.0:
            raise ValidationError("sum_sq", "sums of squares cannot be negative")
        syy = _centred(self.n, self.sum, self.sum_sq, "sum_sq")
        sxx = _centred(self.n, self.x_sum, self.x_sum_sq, "x_sum_sq")
        _centred_cross(self.n, self.x_sum, self.sum, self.xy_sum, sxx, syy, "xy_sum")

    @classmethod
    def from_moments(cls, n: int, mean: float, variance: float) -> ArmSummary:
        """Build a summary from a count, mean and sample variance (``ddof=1``)."""
        count = _count(n, "n")
        mean = _finite(mean, "mean")
        variance = _finite(variance, "variance")
        if variance < 0.0:
            raise ValidationError("variance", f"must be >= 0, got {variance!r}")
        if count < 2 and variance != 0.0:
            raise ValidationError(
                "variance", "must be 0 when n < 2 (a sample variance needs two units)"
            )
        if count == 0 and mean != 0.0:
            raise ValidationError("mean", "must be 0 when n == 0")
        return cls(count, count * mean, (count - 1) * variance + count * mean * mean)

    @classmethod
    def from_proportion(cls, n: int, successes: int) -> ArmSummary:
        """A binary metric: ``successes`` of ``n`` units (0/1 values, so ``sum == sum_sq``)."""
        count = _count(n, "n")
        hits = _count(successes, "successes")
        if hits > count:
            raise ValidationError("successes", f"cannot exceed n ({hits} > {count})")
        return cls(count, float(hits), float(hits))

    @classmethod
    def from_values(
        cls, values: Sequence[float], covariate: Sequence[float] | None = None
    ) -> ArmSummary:
        """Aggregate raw per-unit values (tests, notebooks); production aggregates in SQL."""
        ys = [_finite(v, "values") for v in values]
        if covariate is None:
            return cls(len(ys), math.fsum(ys), math.fsum(y * y for y in ys))
        xs = [_finite(v, "covariate") for v in covariate]
        if len(xs) != len(ys):
            raise ValidationError(
                "covariate", "must have one value per unit (same length as values)"
            )
        return cls(
            len(ys),
            math.fsum(ys),
            math.fsum(y * y for y in ys),
            math.fsum(xs),
            math.fsum(x * x for x in xs),
            math.fsum(x * y for x, y in zip(xs, ys, strict=True)),
        )

    @property
    def mean(self) -> float:
        """Mean of ``Y``; NaN when the arm has no units."""
        return self.sum / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Sample variance of ``Y`` (``ddof=1``); NaN when ``n < 2``."""
        if self.n < 2:
            return math.nan
        return _centred(self.n, self.sum, self.sum_sq, "sum_sq") / (self.n - 1)

    @property
    def x_mean(self) -> float:
        return self.x_sum / self.n if self.n else math.nan

    @property
    def x_variance(self) -> float:
        if self.n < 2:
            return math.nan
        return _centred(self.n, self.x_sum, self.x_sum_sq, "x_sum_sq") / (self.n - 1)

    @property
    def xy_covariance(self) -> float:
        """Sample covariance of ``X`` and ``Y`` (``ddof=1``); NaN when ``n < 2``."""
        if self.n < 2:
            return math.nan
        return (self.xy_sum - self.x_sum * self.sum / self.n) / (self.n - 1)

    @property
    def is_binary(self) -> bool:
        """True when the moments come from 0/1 values: ``sum == sum_sq``, integral, in ``[0, n]``.

        Real values with ``sum(y) == sum(y**2)`` that are not 0/1 exist but do not survive
        floating-point aggregation by chance; the tests use this to pick the two-proportion test.
        """
        return (
            self.n > 0
            and self.sum == self.sum_sq
            and float(self.sum).is_integer()
            and 0.0 <= self.sum <= self.n
        )

    def negated(self) -> ArmSummary:
        """The summary of ``-Y``: flips a one-sided test's direction (lower-is-better metrics)."""
        return ArmSummary(self.n, -self.sum, self.sum_sq, self.x_sum, self.x_sum_sq, -self.xy_sum)


@dataclass(frozen=True, slots=True)
class RatioSummary:
    """One arm's sufficient statistics for a ratio metric ``sum(num) / sum(den)`` over units.

    Per unit ``i`` the database reports a numerator ``a_i`` and a denominator ``b_i``;
    ``cross_sum`` is ``sum(a_i * b_i)``. The unit is the randomisation unit, so units are
    independent while ``a_i`` and ``b_i`` are not -- which is why the cross moment is needed.
    """

    n: int
    num_sum: float
    num_sum_sq: float
    den_sum: float
    den_sum_sq: float
    cross_sum: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _count(self.n, "n"))
        for name in ("num_sum", "num_sum_sq", "den_sum", "den_sum_sq", "cross_sum"):
            object.__setattr__(self, name, _finite(getattr(self, name), name))
        if self.num_sum_sq < 0.0 or self.den_sum_sq < 0.0:
            raise ValidationError("num_sum_sq", "sums of squares cannot be negative")
        saa = _centred(self.n, self.num_sum, self.num_sum_sq, "num_sum_sq")
        sbb = _centred(self.n, self.den_sum, self.den_sum_sq, "den_sum_sq")
        _centred_cross(self.n, self.num_sum, self.den_sum, self.cross_sum, saa, sbb, "cross_sum")

    @property
    def numerator(self) -> ArmSummary:
        return ArmSummary(self.n, self.num_sum, self.num_sum_sq)

    @property
    def denominator(self) -> ArmSummary:
        return ArmSummary(self.n, self.den_sum, self.den_sum_sq)

    @property
    def covariance(self) -> float:
        """Sample covariance of numerator and denominator per unit (``ddof=1``)."""
        if self.n < 2:
            return math.nan
        return (self.cross_sum - self.num_sum * self.den_sum / self.n) / (self.n - 1)

    @property
    def mean(self) -> float:
        """The ratio ``sum(num) / sum(den)``; NaN when the denominator sums to 0."""
        return self.num_sum / self.den_sum if self.den_sum != 0.0 else math.nan

    @property
    def variance(self) -> float:
        """Per-unit delta-method variance of the ratio, so that ``Var(ratio) ~ variance / n``.

        Deng, Knoblich & Lu (2018), delta method for a ratio of means ``mean(a)/mean(b)``:
        ``(s_a^2 - 2 R s_ab + R^2 s_b^2) / mean(b)^2`` with ``R`` the ratio (first-order Taylor
        expansion of ``f(a, b) = a / b`` around the means). NaN when undefined.
        """
        if self.n < 2 or self.den_sum == 0.0:
            return math.nan
        ratio = self.num_sum / self.den_sum
        den_mean = self.den_sum / self.n
        s_aa = self.numerator.variance
        s_bb = self.denominator.variance
        unit = (s_aa - 2.0 * ratio * self.covariance + ratio * ratio * s_bb) / (den_mean * den_mean)
        return max(unit, 0.0)


Summary = ArmSummary | RatioSummary
"""Either shape: what the store hands over per arm and metric."""
