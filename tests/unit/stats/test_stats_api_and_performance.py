"""The public surface of abkit.core.stats, and the cost of one look."""

from __future__ import annotations

import time

import abkit.core.stats as stats_api
from abkit.core.stats import (
    ArmSummary,
    GroupSequentialMonitor,
    SequentialMonitor,
    fixed_horizon_test,
    sequential_srm_test,
    srm_test,
)

REQUIRED = {
    "ArmSummary", "fixed_horizon_test", "sequential_test", "SequentialMonitor",
    "spending_boundaries", "classical_boundaries", "srm_test", "sequential_srm_test",
    "TestResult", "TestStatus", "RatioSummary",
}  # fmt: skip


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical.
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    assert sorted(stats_api.__all__, key=_isort_key) == stats_api.__all__
    assert set(stats_api.__all__) >= REQUIRED
    for name in stats_api.__all__:
        assert hasattr(stats_api, name), name


def test_one_look_costs_less_than_five_milliseconds() -> None:
    """All statistics of one look for two arms and one metric: fixed horizon (absolute and
    relative), the always-valid monitor, a group-sequential look (boundary solved for the new
    information fraction, earlier ones cached), and both SRM checks."""
    sequential = SequentialMonitor(n_star=200_000)
    group = GroupSequentialMonitor(1_000_000, spending="obf")
    timings = []
    for look in range(1, 41):
        n = 5_000 * look
        control = ArmSummary.from_moments(n, 10.0, 4.0)
        treatment = ArmSummary.from_moments(n + look, 10.01, 4.1)
        start = time.perf_counter()
        fixed_horizon_test(control, treatment)
        fixed_horizon_test(control, treatment, relative=True)
        sequential.update(control, treatment)
        group.update(control, treatment)
        srm_test([control.n, treatment.n], [1, 1])
        sequential_srm_test([control.n, treatment.n], [1, 1])
        timings.append(time.perf_counter() - start)
    timings.sort()
    median = timings[len(timings) // 2]
    assert median < 0.005, f"median look took {median * 1e3:.2f} ms"
