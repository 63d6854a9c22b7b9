"""The abkit exception tree.

Caller mistakes raise an :class:`AbkitError` subclass; expected statistical states (not enough
data, zero variance, sample ratio mismatch) are *values* on a result, never exceptions. Each edge
translates this tree exactly once (``raise ... from exc``)::

    AbkitError                  base class; never raised directly
    ├── ValidationError         bad input: a request field, an experiment file
    ├── NotFoundError           an unknown experiment, arm or model version
    ├── ConflictError           valid input the current state refuses (e.g. new arms
    │                           for a running experiment)
    ├── AuthenticationError     missing or wrong credentials
    ├── PermissionDeniedError   valid credentials, action not allowed
    └── StoreUnavailableError   the database cannot be reached
        ├── SchemaOutOfDateError  it answers, but its schema is missing or older than
        │                         this abkit (migrate it)
        └── RegistryUnavailableError  the external model registry (MLflow) cannot be
                                      reached, or fails; retry later

At the edges:

    =====================  ===================  ====  ========
    error                  gRPC status          HTTP  CLI exit
    =====================  ===================  ====  ========
    ValidationError        INVALID_ARGUMENT     400   2
    NotFoundError          NOT_FOUND            404   3
    ConflictError          FAILED_PRECONDITION  409   4
    AuthenticationError    UNAUTHENTICATED      401   1
    PermissionDeniedError  PERMISSION_DENIED    403   1
    StoreUnavailableError  UNAVAILABLE          503   5
    =====================  ===================  ====  ========

Messages name the problem and the fix in abkit's own terms; the edges add how to apply it
there (the CLI, for instance, names the command: ``abkit db upgrade``).

Every message says what was wrong *and* what to do about it; ``ValidationError.field`` names the
offending field (a dotted path such as ``arms[1].weight``) so an API can point at it.
"""

from __future__ import annotations


class AbkitError(Exception):
    """Base class of every error abkit raises on purpose."""


class ValidationError(AbkitError, ValueError):
    """Input that can never be accepted as it is. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class NotFoundError(AbkitError, LookupError):
    """A named thing (experiment, arm, model version) does not exist."""


class ConflictError(AbkitError):
    """The request is well formed but the current state refuses it."""


class AuthenticationError(AbkitError):
    """Credentials are missing or wrong."""


class PermissionDeniedError(AbkitError):
    """Credentials are valid but do not allow this action."""


class StatisticsMismatchError(AbkitError):
    """The maintained statistics differ from a full recomputation at the same watermark."""


class StoreUnavailableError(AbkitError):
    """The store cannot be reached; the operation may succeed if retried later."""


class SchemaOutOfDateError(StoreUnavailableError):
    """The store answers, but its schema is missing or older than this abkit."""


class RegistryUnavailableError(StoreUnavailableError):
    """The external model registry (MLflow) cannot be reached, or answers with an error that
    may go away; the operation may succeed if retried later."""
