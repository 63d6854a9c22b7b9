"""``abkit.openfeature``: abkit as an OpenFeature provider (``pip install abkit[openfeature]``).

A flag is an experiment: the flag key is the experiment key, the string value the model version
to serve, the variant the arm, and the evaluation context's ``targeting_key`` the unit id (its
other attributes feed the experiment's targeting). Evaluation goes through a
:class:`~abkit.client.LocalClient` (no network per evaluation), which logs the exposure of every
randomized unit -- on evaluation, as abkit's own clients do, so a caller cannot forget it.

Reasons, from abkit's to OpenFeature's:

========================  ===================  ========================================
abkit                     OpenFeature          why
========================  ===================  ========================================
SPLIT                     SPLIT                randomized into an arm by weight
OVERRIDE                  TARGETING_MATCH      a rule for this very unit (QA override)
HOLDOUT, NOT_IN_LAYER,    DEFAULT              outside the experiment: control
NOT_IN_COVERAGE,
TARGETING_MISS
EXPERIMENT_NOT_RUNNING    DISABLED             draft or paused: control
CONCLUDED                 STATIC               decided: the rollout arm for everyone
ERROR                     ERROR                the caller's default, with an error code
========================  ===================  ========================================

Flag metadata: ``arm``, ``in_experiment``, ``abkit_reason`` (abkit's own reason) and
``config_stale`` (the client has not heard from a server for ``stale_after``). Errors:
FLAG_NOT_FOUND (no such experiment), PROVIDER_NOT_READY (no config yet),
TARGETING_KEY_MISSING, INVALID_CONTEXT (an invalid unit id or attribute), TYPE_MISMATCH (a
boolean, number or object flag: an experiment's value is a model version, a string).

``track(name, context, details)`` records the KPI event ``name`` for the context's unit
(``details.value``, 1.0 when absent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.flag_evaluation import Reason as OpenFeatureReason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from abkit.client.local import LocalClient
from abkit.core.model import Reason

REASONS: Mapping[Reason, OpenFeatureReason] = {
    Reason.SPLIT: OpenFeatureReason.SPLIT,
    Reason.OVERRIDE: OpenFeatureReason.TARGETING_MATCH,
    Reason.HOLDOUT: OpenFeatureReason.DEFAULT,
    Reason.NOT_IN_LAYER: OpenFeatureReason.DEFAULT,
    Reason.NOT_IN_COVERAGE: OpenFeatureReason.DEFAULT,
    Reason.TARGETING_MISS: OpenFeatureReason.DEFAULT,
    Reason.EXPERIMENT_NOT_RUNNING: OpenFeatureReason.DISABLED,
    Reason.CONCLUDED: OpenFeatureReason.STATIC,
    Reason.ERROR: OpenFeatureReason.ERROR,
}

_ATTRIBUTE_TYPES = (str, int, float, bool)


class AbkitProvider(AbstractProvider):
    """An OpenFeature provider over a :class:`LocalClient` (``client``), or over one it opens
    to ``target`` and closes on shutdown."""

    def __init__(
        self,
        client: LocalClient | None = None,
        *,
        target: str | None = None,
        ready_timeout: float = 5.0,
        **client_options: Any,
    ) -> None:
        super().__init__()
        if (client is None) == (target is None):
            raise ValueError("give either a LocalClient or a target to open one")
        self._owned = client is None
        self.client = client or LocalClient(str(target), **client_options)
        self._ready_timeout = ready_timeout
        self.client.subscribe(self._changed)

    def get_metadata(self) -> Metadata:
        return Metadata(name="abkit")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Wait (up to ``ready_timeout``) for the first config; evaluations before it answer
        PROVIDER_NOT_READY with the default."""
        self.client.wait_ready(self._ready_timeout)

    def shutdown(self) -> None:
        if self._owned:
            self.client.close()
        else:
            self.client.flush()

    def _changed(self, checksum: str) -> None:
        self.emit_provider_configuration_changed(
            ProviderEventDetails(message=f"abkit config {checksum[:12]}")
        )

    # -- evaluation ------------------------------------------------------------------------------

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        context = evaluation_context or EvaluationContext()
        unit = context.targeting_key
        if not unit:
            return _error(default_value, ErrorCode.TARGETING_KEY_MISSING, "no targeting_key")
        attributes = {
            k: v for k, v in context.attributes.items() if isinstance(v, _ATTRIBUTE_TYPES)
        }
        answer = self.client.assign(unit, flag_key, default=default_value, attributes=attributes)
        if answer.error is not None:
            return _error(default_value, _error_code(answer.error, self.client), answer.error)
        return FlagResolutionDetails(
            value=answer.model_version,
            reason=REASONS[answer.reason],
            variant=answer.arm_key,
            flag_metadata={
                "arm": answer.arm_key,
                "in_experiment": answer.in_experiment,
                "abkit_reason": answer.reason.value,
                "config_stale": self.client.status().stale,
            },
        )

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return _mismatch(default_value)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return _mismatch(default_value)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return _mismatch(default_value)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        return _mismatch(default_value)

    # -- tracking --------------------------------------------------------------------------------

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        unit = evaluation_context.targeting_key if evaluation_context else None
        if not unit:
            return  # OpenFeature's track never raises; nothing to attribute the event to
        value = tracking_event_details.value if tracking_event_details else None
        self.client.track(unit, tracking_event_name, 1.0 if value is None else value)


def _error(default: Any, code: ErrorCode, message: str) -> FlagResolutionDetails[Any]:
    return FlagResolutionDetails(
        value=default, reason=OpenFeatureReason.ERROR, error_code=code, error_message=message
    )


def _error_code(message: str, client: LocalClient) -> ErrorCode:
    if message.startswith("NOT_FOUND"):
        return ErrorCode.FLAG_NOT_FOUND
    if not client.status().checksum:
        return ErrorCode.PROVIDER_NOT_READY
    if "closed" in message:
        return ErrorCode.GENERAL
    return ErrorCode.INVALID_CONTEXT


def _mismatch(default: Any) -> FlagResolutionDetails[Any]:
    return _error(
        default,
        ErrorCode.TYPE_MISMATCH,
        "an abkit experiment's value is a model version: evaluate it as a string flag",
    )
