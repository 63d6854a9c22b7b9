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
