"""Group-sequential boundaries: Lan-DeMets alpha spending and classical Pocock / O'Brien-Fleming.

A group-sequential design looks at the data a limited number of times and rejects at look ``k``
when the z statistic crosses a boundary ``c_k`` (z scale). The boundaries are computed from the
joint distribution of ``(Z_1, ..., Z_K)``: with information fractions ``t_k`` the score
``S_k = Z_k sqrt(t_k)`` has independent Gaussian increments (Brownian motion in information
time), so the probability of first crossing at look ``k`` is an iterated integral -- the
Armitage, McPherson & Rowe (1969, JRSS A 132) recursion, evaluated numerically as in Jennison &
Turnbull, *Group Sequential Methods with Applications to Clinical Trials* (2000), Ch. 19.

Spending functions (Lan & DeMets 1983, Biometrika 70; Kim & DeMets 1987, Biometrics 43), for a
one-sided level ``a``:

* ``"obf"`` -- O'Brien-Fleming type ``a(t) = 2 - 2 Phi(z_{1-a/2} / sqrt(t))``;
* ``"pocock"`` -- Pocock type ``a(t) = a log(1 + (e - 1) t)``;
* a float ``rho`` -- the power family ``a(t) = a t^rho`` (Kim & DeMets).

Two-sided designs follow the ldbounds / gsDesign (``test.type = 2``) / rpact convention: symmetric
boundaries ``+-c_k``, ``alpha/2`` spent per side, both sides in the recursion. One-sided designs
reject for large ``Z`` only (``H1: delta > 0``) and spend ``alpha`` on that side.

**Numerics.** The sub-density of ``Z_k`` on the continuation region is kept on a Simpson grid
whose spacing is at most 0.05 and at most a quarter of the conditional standard deviation of the
increments on either side of the look (so dense looks get a finer grid); density beyond 9
standard deviations of the mean (mass < 1e-18) is dropped. Boundaries are solved by Brent's
method; refining the grid 3x moves them by < 1e-5 (a test checks it), and Tables 2.1/2.3 of
Jennison & Turnbull are reproduced to all published digits. The one approximation that shows:
boundaries above ~8.5 (early O'Brien-Fleming looks, where less than 1e-18 alpha is spent) are
not resolved exactly -- like ldbounds' truncation at 8, they mean "cannot reject here".

**State.** :class:`GroupSequentialDesign` keeps the grid of the last look, so a new look costs one
grid step: old boundaries are never recomputed when the information at the next look arrives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, special

from abkit.core.stats.fixed_horizon import check_alpha
from abkit.errors import ValidationError

Spending = str | float

_MAX_STEP = 0.05  # grid spacing on the z scale, at most
_STEPS_PER_SD = 4.0  # grid points per conditional standard deviation of the increments, at least
_WINDOW = 9.0  # half-width of the integration window around the mean of Z_k (sd units)
_MAX_POINTS = 4001  # cap on one grid: bounds memory/time when looks are extremely close together
_TOL = 1e-12


def check_spending(spending: Spending) -> Spending:
    if isinstance(spending, str):
        if spending not in ("obf", "pocock"):
            raise ValidationError(
                "spending", f"must be 'obf', 'pocock' or a power rho > 0, got {spending!r}"
            )
        return spending
    if isinstance(spending, bool) or not isinstance(spending, int | float):
        raise ValidationError(
            "spending", f"must be 'obf', 'pocock' or a power rho > 0, got {spending!r}"
        )
    if not (math.isfinite(spending) and spending > 0.0):
        raise ValidationError("spending", f"the power-family rho must be > 0, got {spending!r}")
    return float(spending)


def check_sides(sides: int) -> int:
    if isinstance(sides, bool) or sides not in (1, 2):
        raise ValidationError("sides", f"must be 1 or 2, got {sides!r}")
    return sides


def alpha_spent(t: float, *, alpha: float, spending: Spending) -> float:
    """Cumulative one-sided alpha spent by information fraction ``t`` (capped to [0, 1])."""
    t = min(max(t, 0.0), 1.0)
    if t == 0.0:
        return 0.0
    if spending == "obf":  # Lan & DeMets (1983): alpha_1*(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t))
        return float(2.0 * special.ndtr(-special.ndtri(1.0 - alpha / 2.0) / math.sqrt(t)))
    if spending == "pocock":  # Lan & DeMets (1983): alpha_2*(t) = alpha log(1 + (e - 1) t)
        return alpha * math.log1p((math.e - 1.0) * t)
    return float(alpha * t ** float(spending))  # Kim & DeMets (1987): alpha t^rho


@dataclass(frozen=True, slots=True)
class _Grid:
    """Simpson nodes and weights (weight x sub-density) of ``Z_k`` on its continuation region."""

    t: float
    points: NDArray[np.float64]
    weights: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CrossingState:
    """The recursion after look ``k``, stored lazily: the continuation density of ``Z_k`` is
    materialised only when look ``k+1`` arrives, because the grid it needs depends on the
    spacing to that next look. ``previous`` is the grid of look ``k-1`` (``None`` for ``k = 1``)."""

    drift: float = 0.0
    t: float = 0.0
    lower: float = -math.inf
    upper: float = math.inf
    previous: _Grid | None = None

    def grid(self, next_t: float) -> _Grid | None:
        """Simpson grid for ``Z_k`` restricted to ``(lower, upper)``; ``None`` before any look."""
        if self.t == 0.0:
            return None
        mean = self.drift * math.sqrt(self.t)
        a = max(self.lower, mean - _WINDOW)
        b = min(self.upper, mean + _WINDOW)
        if a >= b:
            return _Grid(self.t, np.zeros(0), np.zeros(0))
        sd_here = 1.0 if self.previous is None else math.sqrt((self.t - self.previous.t) / self.t)
        sd_next = math.sqrt((next_t - self.t) / self.t)
        step = min(_MAX_STEP, sd_here / _STEPS_PER_SD, sd_next / _STEPS_PER_SD)
        intervals = min(_MAX_POINTS - 1, max(2, math.ceil((b - a) / step)))
        intervals += intervals % 2  # Simpson needs an even number of intervals
        points = np.linspace(a, b, intervals + 1)
        simpson = np.ones(intervals + 1)
        simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
        simpson *= (b - a) / intervals / 3.0
        return _Grid(self.t, points, simpson * self._density(points))

    def _density(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.previous is None:  # Z_1 ~ N(drift sqrt(t_1), 1)
            return np.exp(-0.5 * (z - self.drift * math.sqrt(self.t)) ** 2) / math.sqrt(2 * math.pi)
        prev = self.previous
        increment = self.t - prev.t
        # Z_k sqrt(t_k) = Z_{k-1} sqrt(t_{k-1}) + N(drift * increment, increment)
        sd = math.sqrt(increment)
        x = (
            z[:, None] * math.sqrt(self.t)
            - prev.points[None, :] * math.sqrt(prev.t)
            - self.drift * increment
        ) / sd
        kernel = np.exp(-0.5 * x * x) * (math.sqrt(self.t) / (sd * math.sqrt(2 * math.pi)))
        density: NDArray[np.float64] = kernel @ prev.weights
        return density


def _exit(
    grid: _Grid | None, drift: float, t: float, upper: float, lower: float
) -> tuple[float, float]:
    """P(continue through look k-1, then Z_k >= upper) and P(..., Z_k <= lower) at fraction t."""
    if grid is None:
        shift = drift * math.sqrt(t)
        return float(special.ndtr(shift - upper)), float(special.ndtr(lower - shift))
    if grid.points.size == 0:
        return 0.0, 0.0
    increment = t - grid.t
    sd = math.sqrt(increment)
    centre = grid.points * math.sqrt(grid.t) + drift * increment
    up = float(special.ndtr((centre - upper * math.sqrt(t)) / sd) @ grid.weights)
    low = 0.0
    if lower > -math.inf:
        low = float(special.ndtr((lower * math.sqrt(t) - centre) / sd) @ grid.weights)
    return max(up, 0.0), max(low, 0.0)


def advance(
    state: CrossingState, t: float, upper: float, lower: float
) -> tuple[CrossingState, float, float]:
    """Move the recursion to a look at fraction ``t`` with boundaries ``(lower, upper)``.

    Returns the new state and the probabilities of crossing ``upper`` / ``lower`` first at this
    look (under the state's drift).
    """
    grid = state.grid(t)
    up, low = _exit(grid, state.drift, t, upper, lower)
    return CrossingState(state.drift, t, lower, upper, grid), up, low


def solve_boundary(state: CrossingState, t: float, target: float, sides: int) -> float:
    """The ``c`` whose first-crossing probability at ``t`` equals ``target`` (per side)."""
    if target <= 0.0:
        return math.inf
    grid = state.grid(t)

    def excess(c: float) -> float:
        up, low = _exit(grid, state.drift, t, c, -c if sides == 2 else -math.inf)
        return (up + low) - target * sides

    if excess(0.0) <= 0.0:  # cannot spend that much any more: reject whatever is left
        return 0.0
    return float(optimize.brentq(excess, 0.0, 40.0, xtol=_TOL, rtol=4 * np.finfo(float).eps))


@dataclass
class GroupSequentialDesign:
    """An alpha-spending design whose boundaries grow one look at a time.

    ``add_look(t)`` takes the *observed* information fraction of the new look (information or
    sample size so far over the planned maximum) and returns its z-scale boundary. ``final=True``
    (or ``t >= 1``) spends all remaining alpha, e.g. when the experiment ends early or overruns.
    Only the last look's grid is kept, so each look costs one recursion step.
    """

    alpha: float = 0.05
    spending: Spending = "obf"
    sides: int = 2
    fractions: list[float] = field(default_factory=list)
    boundaries: list[float] = field(default_factory=list)
    _state: CrossingState = field(default_factory=CrossingState, repr=False)
    _spent: float = 0.0
    _closed: bool = False

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)
        self.spending = check_spending(self.spending)
        self.sides = check_sides(self.sides)

    @property
    def alpha_per_side(self) -> float:
        return self.alpha / self.sides

    def add_look(self, information_fraction: float, *, final: bool = False) -> float:
        t = float(information_fraction)
        if not (math.isfinite(t) and t > 0.0):
            raise ValidationError(
                "information_fraction", f"must be > 0, got {information_fraction!r}"
            )
        if self._closed:
            raise ValidationError(
                "information_fraction", "the design already spent all its alpha at a final look"
            )
        if self.fractions and t <= self.fractions[-1]:
            raise ValidationError(
                "information_fraction",
                f"must increase from look to look ({t!r} after {self.fractions[-1]!r})",
            )
        final = final or t >= 1.0
        spent = (
            self.alpha_per_side
            if final
            else alpha_spent(t, alpha=self.alpha_per_side, spending=self.spending)
        )
        boundary = solve_boundary(self._state, t, spent - self._spent, self.sides)
        lower = -boundary if self.sides == 2 else -math.inf
        self._state, _, _ = advance(self._state, t, boundary, lower)
        self._spent = max(self._spent, spent)
        self._closed = final
        self.fractions.append(t)
        self.boundaries.append(boundary)
        return boundary


def spending_boundaries(
    information_fractions: Sequence[float],
    *,
    alpha: float = 0.05,
    spending: Spending = "obf",
    sides: int = 2,
) -> tuple[float, ...]:
    """Lan-DeMets boundaries (z scale) at the given increasing information fractions.

    The last fraction is treated as it is (alpha is fully spent only if it reaches 1); call
    :meth:`GroupSequentialDesign.add_look` with ``final=True`` to close a design early.
    """
    design = GroupSequentialDesign(alpha=alpha, spending=spending, sides=sides)
    return tuple(design.add_look(t) for t in information_fractions)


def crossing_probabilities(
    information_fractions: Sequence[float],
    boundaries: Sequence[float],
    *,
    drift: float = 0.0,
    sides: int = 2,
) -> tuple[tuple[float, float], ...]:
    """Per look, the probability of stopping there by crossing the upper / lower boundary.

    ``drift`` is ``E[Z]`` at information fraction 1 (``delta * sqrt(I_max)``), so ``drift = 0`` is
    H0. Used to check type-I error, to compute power and expected sample size.
    """
    check_sides(sides)
    if len(information_fractions) != len(boundaries):
        raise ValidationError("boundaries", "need one boundary per information fraction")
    state = CrossingState(drift=float(drift))
    out = []
    previous = 0.0
    for t, c in zip(information_fractions, boundaries, strict=True):
        if not t > previous:
            raise ValidationError("information_fractions", "must be positive and increasing")
        state, up, low = advance(state, float(t), float(c), -float(c) if sides == 2 else -math.inf)
        out.append((up, low))
        previous = t
    return tuple(out)


def classical_boundaries(
    k: int, *, alpha: float = 0.05, kind: str = "pocock", sides: int = 2
) -> tuple[float, ...]:
    """Pocock (1977) or O'Brien & Fleming (1979) boundaries for ``k`` equally spaced looks.

    Pocock: one constant ``C_P`` at every look. O'Brien-Fleming: ``C_B sqrt(k / i)`` at look ``i``.
    The constant is solved so that the total crossing probability under H0 is ``alpha``
    (two-sided: either boundary), cf. Jennison & Turnbull (2000) Tables 2.1 and 2.3.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValidationError("k", f"must be a positive integer number of looks, got {k!r}")
    alpha = check_alpha(alpha)
    check_sides(sides)
    if kind not in ("pocock", "obf"):
        raise ValidationError("kind", f"must be 'pocock' or 'obf', got {kind!r}")
    fractions = [(i + 1) / k for i in range(k)]
    shape = [1.0 if kind == "pocock" else math.sqrt(k / (i + 1)) for i in range(k)]

    def excess(constant: float) -> float:
        probs = crossing_probabilities(fractions, [constant * s for s in shape], sides=sides)
        return sum(up + low for up, low in probs) - alpha

    constant = optimize.brentq(
        excess, float(special.ndtri(1.0 - alpha / sides)) - 1e-9, 10.0, xtol=_TOL
    )
    return tuple(constant * s for s in shape)
