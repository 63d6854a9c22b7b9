import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    REASON_SPLIT: _ClassVar[Reason]
    REASON_OVERRIDE: _ClassVar[Reason]
    REASON_HOLDOUT: _ClassVar[Reason]
    REASON_NOT_IN_LAYER: _ClassVar[Reason]
    REASON_NOT_IN_COVERAGE: _ClassVar[Reason]
    REASON_TARGETING_MISS: _ClassVar[Reason]
    REASON_EXPERIMENT_NOT_RUNNING: _ClassVar[Reason]
    REASON_CONCLUDED: _ClassVar[Reason]
    REASON_ERROR: _ClassVar[Reason]

class ExperimentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATUS_UNSPECIFIED: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_DRAFT: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_RUNNING: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_PAUSED: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_CONCLUDED: _ClassVar[ExperimentStatus]
REASON_UNSPECIFIED: Reason
REASON_SPLIT: Reason
REASON_OVERRIDE: Reason
REASON_HOLDOUT: Reason
REASON_NOT_IN_LAYER: Reason
REASON_NOT_IN_COVERAGE: Reason
REASON_TARGETING_MISS: Reason
REASON_EXPERIMENT_NOT_RUNNING: Reason
REASON_CONCLUDED: Reason
REASON_ERROR: Reason
EXPERIMENT_STATUS_UNSPECIFIED: ExperimentStatus
EXPERIMENT_STATUS_DRAFT: ExperimentStatus
EXPERIMENT_STATUS_RUNNING: ExperimentStatus
EXPERIMENT_STATUS_PAUSED: ExperimentStatus
EXPERIMENT_STATUS_CONCLUDED: ExperimentStatus

class AttributeValue(_message.Message):
    __slots__ = ("string_value", "number_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    number_value: float
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., number_value: _Optional[float] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class AssignRequest(_message.Message):
    __slots__ = ("unit_id", "attributes", "experiment_keys")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AttributeValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AttributeValue, _Mapping]] = ...) -> None: ...
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_KEYS_FIELD_NUMBER: _ClassVar[int]
    unit_id: str
    attributes: _containers.MessageMap[str, AttributeValue]
    experiment_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unit_id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, AttributeValue]] = ..., experiment_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("experiment_key", "arm_key", "model_version", "reason", "in_experiment")
    EXPERIMENT_KEY_FIELD_NUMBER: _ClassVar[int]
    ARM_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IN_EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment_key: str
    arm_key: str
    model_version: str
    reason: Reason
    in_experiment: bool
    def __init__(self, experiment_key: _Optional[str] = ..., arm_key: _Optional[str] = ..., model_version: _Optional[str] = ..., reason: _Optional[_Union[Reason, str]] = ..., in_experiment: _Optional[bool] = ...) -> None: ...

class AssignResponse(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class AssignBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[AssignRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[AssignRequest, _Mapping]]] = ...) -> None: ...

class AssignBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[AssignResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[AssignResponse, _Mapping]]] = ...) -> None: ...

class TrackRequest(_message.Message):
    __slots__ = ("unit_id", "metric", "value", "occurred_at", "event_id")
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    unit_id: str
    metric: str
    value: float
    occurred_at: _timestamp_pb2.Timestamp
    event_id: str
    def __init__(self, unit_id: _Optional[str] = ..., metric: _Optional[str] = ..., value: _Optional[float] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_id: _Optional[str] = ...) -> None: ...

class TrackResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class TrackBatchRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TrackRequest]
    def __init__(self, events: _Optional[_Iterable[_Union[TrackRequest, _Mapping]]] = ...) -> None: ...

class TrackBatchResponse(_message.Message):
    __slots__ = ("event_ids",)
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchConfigRequest(_message.Message):
    __slots__ = ("known_checksum",)
    KNOWN_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    known_checksum: str
    def __init__(self, known_checksum: _Optional[str] = ...) -> None: ...

class ArmConfig(_message.Message):
    __slots__ = ("key", "model_version", "weight", "control")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    key: str
    model_version: str
    weight: float
    control: bool
    def __init__(self, key: _Optional[str] = ..., model_version: _Optional[str] = ..., weight: _Optional[float] = ..., control: _Optional[bool] = ...) -> None: ...

class LayerConfig(_message.Message):
    __slots__ = ("key", "start", "end")
    KEY_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    key: str
    start: float
    end: float
    def __init__(self, key: _Optional[str] = ..., start: _Optional[float] = ..., end: _Optional[float] = ...) -> None: ...

class HoldoutConfig(_message.Message):
    __slots__ = ("key", "fraction")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    key: str
    fraction: float
    def __init__(self, key: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class ExperimentConfig(_message.Message):
    __slots__ = ("key", "status", "model", "salt", "hash_version", "coverage", "arms", "layer", "holdout", "targeting_json", "overrides", "rollout_arm", "config_checksum")
    class OverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    HASH_VERSION_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    TARGETING_JSON_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ARM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    key: str
    status: ExperimentStatus
    model: str
    salt: str
    hash_version: int
    coverage: float
    arms: _containers.RepeatedCompositeFieldContainer[ArmConfig]
    layer: LayerConfig
    holdout: HoldoutConfig
    targeting_json: str
    overrides: _containers.ScalarMap[str, str]
    rollout_arm: str
    config_checksum: str
    def __init__(self, key: _Optional[str] = ..., status: _Optional[_Union[ExperimentStatus, str]] = ..., model: _Optional[str] = ..., salt: _Optional[str] = ..., hash_version: _Optional[int] = ..., coverage: _Optional[float] = ..., arms: _Optional[_Iterable[_Union[ArmConfig, _Mapping]]] = ..., layer: _Optional[_Union[LayerConfig, _Mapping]] = ..., holdout: _Optional[_Union[HoldoutConfig, _Mapping]] = ..., targeting_json: _Optional[str] = ..., overrides: _Optional[_Mapping[str, str]] = ..., rollout_arm: _Optional[str] = ..., config_checksum: _Optional[str] = ...) -> None: ...

class ConfigUpdate(_message.Message):
    __slots__ = ("format", "checksum", "full", "experiments")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    format: int
    checksum: str
    full: bool
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentConfig]
    def __init__(self, format: _Optional[int] = ..., checksum: _Optional[str] = ..., full: _Optional[bool] = ..., experiments: _Optional[_Iterable[_Union[ExperimentConfig, _Mapping]]] = ...) -> None: ...

class ExposureGroup(_message.Message):
    __slots__ = ("experiment_key", "arm_key", "model_version", "config_checksum", "unit_ids", "exposed_at_unix_nanos", "trace_ids", "span_ids")
    EXPERIMENT_KEY_FIELD_NUMBER: _ClassVar[int]
    ARM_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    UNIT_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPOSED_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    TRACE_IDS_FIELD_NUMBER: _ClassVar[int]
    SPAN_IDS_FIELD_NUMBER: _ClassVar[int]
    experiment_key: str
    arm_key: str
    model_version: str
    config_checksum: str
    unit_ids: _containers.RepeatedScalarFieldContainer[str]
    exposed_at_unix_nanos: _containers.RepeatedScalarFieldContainer[int]
    trace_ids: _containers.RepeatedScalarFieldContainer[str]
    span_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, experiment_key: _Optional[str] = ..., arm_key: _Optional[str] = ..., model_version: _Optional[str] = ..., config_checksum: _Optional[str] = ..., unit_ids: _Optional[_Iterable[str]] = ..., exposed_at_unix_nanos: _Optional[_Iterable[int]] = ..., trace_ids: _Optional[_Iterable[str]] = ..., span_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LogExposuresRequest(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[ExposureGroup]
    def __init__(self, groups: _Optional[_Iterable[_Union[ExposureGroup, _Mapping]]] = ...) -> None: ...

class LogExposuresResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
