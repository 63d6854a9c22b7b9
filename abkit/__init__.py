"""abkit: experimentation and A/B testing for ML model versions."""

from abkit.core.assignment import Assignment, Catalog, CompiledExperiment, assign
from abkit.core.hashing import bucket
from abkit.core.model import (
    Arm,
    Experiment,
    ExperimentStatus,
    Exposure,
    Holdout,
    LayerSegment,
    Reason,
)
from abkit.errors import (
    AbkitError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "AbkitError",
    "Arm",
    "Assignment",
    "AuthenticationError",
    "Catalog",
    "CompiledExperiment",
    "ConflictError",
    "Experiment",
    "ExperimentStatus",
    "Exposure",
    "Holdout",
    "LayerSegment",
    "NotFoundError",
    "PermissionDeniedError",
    "Reason",
    "StoreUnavailableError",
    "ValidationError",
    "__version__",
    "assign",
    "bucket",
]
