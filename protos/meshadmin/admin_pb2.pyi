from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClusterStatusRequest(_message.Message):
    __slots__ = ("include_models", "page_size", "page_token", "model_id_glob", "type", "status", "instance_id")
    INCLUDE_MODELS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_GLOB_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    include_models: bool
    page_size: int
    page_token: str
    model_id_glob: str
    type: str
    status: str
    instance_id: str
    def __init__(self, include_models: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., model_id_glob: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[str] = ..., instance_id: _Optional[str] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("instance_id", "address", "zone", "labels", "capacity_bytes", "used_bytes", "lru_age_ms", "model_count", "loads_in_progress", "rpm", "shutting_down", "leader")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LRU_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOADS_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    SHUTTING_DOWN_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    address: str
    zone: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    capacity_bytes: int
    used_bytes: int
    lru_age_ms: int
    model_count: int
    loads_in_progress: int
    rpm: int
    shutting_down: bool
    leader: bool
    def __init__(self, instance_id: _Optional[str] = ..., address: _Optional[str] = ..., zone: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., lru_age_ms: _Optional[int] = ..., model_count: _Optional[int] = ..., loads_in_progress: _Optional[int] = ..., rpm: _Optional[int] = ..., shutting_down: _Optional[bool] = ..., leader: _Optional[bool] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("model_id", "type", "loaded_on", "loading_on", "failed_on", "last_used_ms", "status", "errors", "owner", "min_copies", "max_copies", "spec_digest", "size_bytes")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LOADED_ON_FIELD_NUMBER: _ClassVar[int]
    LOADING_ON_FIELD_NUMBER: _ClassVar[int]
    FAILED_ON_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MIN_COPIES_FIELD_NUMBER: _ClassVar[int]
    MAX_COPIES_FIELD_NUMBER: _ClassVar[int]
    SPEC_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    type: str
    loaded_on: _containers.RepeatedScalarFieldContainer[str]
    loading_on: _containers.RepeatedScalarFieldContainer[str]
    failed_on: _containers.RepeatedScalarFieldContainer[str]
    last_used_ms: int
    status: str
    errors: _containers.RepeatedScalarFieldContainer[str]
    owner: str
    min_copies: int
    max_copies: int
    spec_digest: str
    size_bytes: int
    def __init__(self, model_id: _Optional[str] = ..., type: _Optional[str] = ..., loaded_on: _Optional[_Iterable[str]] = ..., loading_on: _Optional[_Iterable[str]] = ..., failed_on: _Optional[_Iterable[str]] = ..., last_used_ms: _Optional[int] = ..., status: _Optional[str] = ..., errors: _Optional[_Iterable[str]] = ..., owner: _Optional[str] = ..., min_copies: _Optional[int] = ..., max_copies: _Optional[int] = ..., spec_digest: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class VModelSummary(_message.Message):
    __slots__ = ("vmodel_id", "owner", "active_model_id", "target_model_id", "status")
    VMODEL_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    vmodel_id: str
    owner: str
    active_model_id: str
    target_model_id: str
    status: str
    def __init__(self, vmodel_id: _Optional[str] = ..., owner: _Optional[str] = ..., active_model_id: _Optional[str] = ..., target_model_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("responding_instance", "instances", "models", "next_page_token", "total_models", "load_timeout_ms", "vmodels")
    RESPONDING_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MODELS_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    VMODELS_FIELD_NUMBER: _ClassVar[int]
    responding_instance: str
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    next_page_token: str
    total_models: int
    load_timeout_ms: int
    vmodels: _containers.RepeatedCompositeFieldContainer[VModelSummary]
    def __init__(self, responding_instance: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_models: _Optional[int] = ..., load_timeout_ms: _Optional[int] = ..., vmodels: _Optional[_Iterable[_Union[VModelSummary, _Mapping]]] = ...) -> None: ...
