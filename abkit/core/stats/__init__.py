"""abkit's statistics engine (pure: numbers in, numbers out; no I/O, clock or environment).

Inputs are per-arm sufficient statistics (:class:`ArmSummary`, :class:`RatioSummary`) computed by
SQL. Outputs are frozen results whose ``status`` says whether they carry evidence. Modules:

* ``summary`` -- the data contract; ``effect`` -- difference / lift / CUPED / ratio estimates;
* ``fixed_horizon`` -- Welch t, two-proportion z, delta method (one look);
* ``sequential`` -- always-valid mSPRT / asymptotic confidence sequences (the default);
* ``group_sequential`` and ``group_sequential_monitor`` -- Lan-DeMets and classical boundaries;
* ``srm`` -- sample ratio mismatch; ``multiple_testing`` -- Holm, BH, Bonferroni;
* ``planning`` -- sample size, power, sequential inflation.

See docs/statistics.md for methods, conventions and the simulation figures.
"""

from abkit.core.stats.effect import Effect, cuped_theta, estimate_effect
from abkit.core.stats.fixed_horizon import fixed_horizon_test
from abkit.core.stats.group_sequential import (
    GroupSequentialDesign,
    alpha_spent,
    classical_boundaries,
    crossing_probabilities,
    spending_boundaries,
)
from abkit.core.stats.group_sequential_monitor import (
    GroupSequentialMonitor,
    GroupSequentialResult,
    GroupSequentialState,
)
from abkit.core.stats.multiple_testing import Adjusted, adjust_p_values, bonferroni_alpha
from abkit.core.stats.planning import (
    Inflation,
    SampleSize,
    msprt_boundaries,
    power_binary,
    power_continuous,
    sample_size_binary,
    sample_size_continuous,
    sequential_inflation,
)
from abkit.core.stats.result import Method, TestResult, TestStatus
from abkit.core.stats.sequential import (
    DEFAULT_N_STAR,
    MonitorState,
    SequentialConfig,
    SequentialMonitor,
    sequential_test,
)
from abkit.core.stats.srm import SRM_THRESHOLD, SrmResult, sequential_srm_test, srm_test
from abkit.core.stats.summary import ArmSummary, RatioSummary, Summary

__all__ = [
    "DEFAULT_N_STAR",
    "SRM_THRESHOLD",
    "Adjusted",
    "ArmSummary",
    "Effect",
    "GroupSequentialDesign",
    "GroupSequentialMonitor",
    "GroupSequentialResult",
    "GroupSequentialState",
    "Inflation",
    "Method",
    "MonitorState",
    "RatioSummary",
    "SampleSize",
    "SequentialConfig",
    "SequentialMonitor",
    "SrmResult",
    "Summary",
    "TestResult",
    "TestStatus",
    "adjust_p_values",
    "alpha_spent",
    "bonferroni_alpha",
    "classical_boundaries",
    "crossing_probabilities",
    "cuped_theta",
    "estimate_effect",
    "fixed_horizon_test",
    "msprt_boundaries",
    "power_binary",
    "power_continuous",
    "sample_size_binary",
    "sample_size_continuous",
    "sequential_inflation",
    "sequential_srm_test",
    "sequential_test",
    "spending_boundaries",
    "srm_test",
]
