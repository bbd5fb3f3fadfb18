from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FollowRequest(_message.Message):
    __slots__ = ("worker", "pid")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    worker: int
    pid: int
    def __init__(self, worker: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class MethodPath(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, path: _Optional[_Iterable[int]] = ...) -> None: ...

class RuntimeRoute(_message.Message):
    __slots__ = ("up", "address", "methods", "allow_any_method")
    class MethodsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MethodPath
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MethodPath, _Mapping]] = ...) -> None: ...
    UP_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_ANY_METHOD_FIELD_NUMBER: _ClassVar[int]
    up: bool
    address: str
    methods: _containers.MessageMap[str, MethodPath]
    allow_any_method: bool
    def __init__(self, up: _Optional[bool] = ..., address: _Optional[str] = ..., methods: _Optional[_Mapping[str, MethodPath]] = ..., allow_any_method: _Optional[bool] = ...) -> None: ...

class VModelActive(_message.Message):
    __slots__ = ("vmodel_id", "active_model_id")
    VMODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    vmodel_id: str
    active_model_id: str
    def __init__(self, vmodel_id: _Optional[str] = ..., active_model_id: _Optional[str] = ...) -> None: ...

class TableUpdate(_message.Message):
    __slots__ = ("reset", "synced", "active", "inactive", "vmodels", "vmodels_removed", "runtime", "instance_id", "peer_token")
    RESET_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_FIELD_NUMBER: _ClassVar[int]
    VMODELS_FIELD_NUMBER: _ClassVar[int]
    VMODELS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    reset: bool
    synced: bool
    active: _containers.RepeatedScalarFieldContainer[str]
    inactive: _containers.RepeatedScalarFieldContainer[str]
    vmodels: _containers.RepeatedCompositeFieldContainer[VModelActive]
    vmodels_removed: _containers.RepeatedScalarFieldContainer[str]
    runtime: RuntimeRoute
    instance_id: str
    peer_token: str
    def __init__(self, reset: _Optional[bool] = ..., synced: _Optional[bool] = ..., active: _Optional[_Iterable[str]] = ..., inactive: _Optional[_Iterable[str]] = ..., vmodels: _Optional[_Iterable[_Union[VModelActive, _Mapping]]] = ..., vmodels_removed: _Optional[_Iterable[str]] = ..., runtime: _Optional[_Union[RuntimeRoute, _Mapping]] = ..., instance_id: _Optional[str] = ..., peer_token: _Optional[str] = ...) -> None: ...

class ModelUsage(_message.Message):
    __slots__ = ("model_id", "requests", "last_used_ms")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_MS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    requests: int
    last_used_ms: int
    def __init__(self, model_id: _Optional[str] = ..., requests: _Optional[int] = ..., last_used_ms: _Optional[int] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("name", "labels", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    value: float
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., value: _Optional[float] = ...) -> None: ...

class MetricFamily(_message.Message):
    __slots__ = ("name", "type", "help", "samples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    HELP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    help: str
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., help: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ...) -> None: ...

class UsageReport(_message.Message):
    __slots__ = ("worker", "pid", "usage", "metrics")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    worker: int
    pid: int
    usage: _containers.RepeatedCompositeFieldContainer[ModelUsage]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricFamily]
    def __init__(self, worker: _Optional[int] = ..., pid: _Optional[int] = ..., usage: _Optional[_Iterable[_Union[ModelUsage, _Mapping]]] = ..., metrics: _Optional[_Iterable[_Union[MetricFamily, _Mapping]]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
