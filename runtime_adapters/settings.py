"""RuntimeSettings: the runtime process's one typed settings object; the only module here reading os.environ.

Precedence: CLI flags (``overrides``) > environment > cgroup > defaults. Environment names follow the
ModelMesh runtime adapters (modelmesh.md §6 "Runtime-reported values"): ``CONTAINER_MEM_REQ_BYTES``,
``MEM_BUFFER_BYTES``, ``LOADING_CONCURRENCY``, ``LOADTIME_TIMEOUT``, ``DEFAULT_MODELSIZE``,
``MODELSIZE_MULTIPLIER``, ``LIMIT_PER_MODEL_CONCURRENCY``, ``RUNTIME_VERSION``, ``ROOT_MODEL_DIR``,
``ADAPTER_PORT``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

MIB = 1 << 20
GIB = 1 << 30
CGROUP_V2_LIMIT = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
_UNLIMITED_V1 = 1 << 60  # cgroup v1 reports "no limit" as a page-rounded 2^63


@dataclass
class RuntimeSettings:
    host: str = "127.0.0.1"
    """Address the gRPC server binds (SPI and V2 inference share the port)."""

    port: int = 8085
    """gRPC port; 0 picks a free one. Env ``ADAPTER_PORT``."""

    socket_path: str = ""
    """Also listen on this unix socket when set."""

    capacity_bytes: int = 0
    """Model memory reported to the mesh. 0 = derive: (``CONTAINER_MEM_REQ_BYTES`` or the cgroup memory
    limit) minus ``mem_buffer_bytes``, else 1 GiB."""

    mem_buffer_bytes: int = 256 * MIB
    """Memory kept back for the runtime itself when capacity is derived. Env ``MEM_BUFFER_BYTES``."""

    loading_concurrency: int = 1
    """maxLoadingConcurrency reported to the mesh; also bounds parallel loads here. Env ``LOADING_CONCURRENCY``."""

    load_timeout_ms: int = 90_000
    """Deadline for pull + load of one model; reported as modelLoadingTimeoutMs. Env ``LOADTIME_TIMEOUT``."""

    default_model_size: int = 1_000_000
    """Size used when nothing better is known (defaultModelSizeInBytes). Env ``DEFAULT_MODELSIZE``."""

    size_multiplier: float = 0.0
    """When > 0, replaces every per-type default multiplier (see sizing.py). Env ``MODELSIZE_MULTIPLIER``."""

    limit_model_concurrency: int = 0
    """Per-model concurrency returned in LoadModelResponse.maxConcurrency; 0 = unlimited.
    Env ``LIMIT_PER_MODEL_CONCURRENCY``."""

    runtime_version: str = ""
    """runtimeVersion reported to the mesh; empty = the package's own. Env ``RUNTIME_VERSION``."""

    model_dir: Path | None = None
    """Where the puller writes models (``<model_dir>/<model_id>/``). Env ``ROOT_MODEL_DIR``."""

    local_roots: tuple[Path, ...] = ()
    """Roots local model paths must stay inside (passed to the puller; empty = the puller's env default)."""

    storage_config: Path | None = None
    """Storage config file/dir for the puller (empty = the puller's env default, ``STORAGE_CONFIG``)."""

    predict_threads: int = 0
    """Threads of the ``rt-predict`` executor; 0 = min(4, CPU count)."""

    max_message_bytes: int = 16 * MIB
    """Largest gRPC message accepted or sent (ModelMesh's default is 16 MiB)."""

    grace_s: float = 5.0
    """Grace period for in-flight RPCs at shutdown."""

    tls_cert: Path | None = None
    """Server certificate (PEM); with ``tls_key`` the port is served over TLS."""

    tls_key: Path | None = None
    """Server private key (PEM)."""

    tracing: str = "off"
    """OpenTelemetry spans of SPI/inference calls and pulls: off, console or otlp (needs the SDK; see
    mesh/tracing.py). Env ``MM_TRACING``, inherited from the pod that starts the runtime."""

    tracing_endpoint: str = ""
    """OTLP/gRPC endpoint for ``tracing=otlp`` (empty: the exporter's default). Env ``MM_TRACING_ENDPOINT``."""

    log_format: str = "text"
    """Log lines as text or json. Env ``MM_LOG_FORMAT``, inherited from the pod."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> RuntimeSettings:
        """Build from the environment; keyword overrides (CLI flags) win. ``None`` overrides are ignored."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field_name, (var, conv) in _ENV.items():
            raw = env.get(var, "")
            if raw.strip():
                try:
                    values[field_name] = conv(raw.strip())
                except ValueError as exc:
                    raise ValueError(f"{var}={raw!r} is not a valid {conv.__name__}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown RuntimeSettings fields: {sorted(unknown)}")
        settings = cls(**values)
        if settings.capacity_bytes <= 0:
            settings.capacity_bytes = derive_capacity(
                container_mem=_int_or_none(env.get("CONTAINER_MEM_REQ_BYTES")),
                buffer=settings.mem_buffer_bytes,
            )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject values the mesh would reject (modelmesh.md §1.2)."""
        if self.loading_concurrency < 1:
            raise ValueError("loading concurrency must be >= 1")
        if self.load_timeout_ms < 100:
            raise ValueError("load timeout must be >= 100 ms")
        if self.default_model_size < 1:
            raise ValueError("default model size must be >= 1 byte")
        if self.capacity_bytes < 1:
            raise ValueError("capacity must be >= 1 byte")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key must be given together")


def derive_capacity(*, container_mem: int | None, buffer: int, cgroup_limit: int | None = None) -> int:
    """Capacity = (container memory request, else cgroup limit) - buffer; 1 GiB when neither is known.
    A buffer larger than half the memory is capped there, so a small container still reports room."""
    total = container_mem if container_mem else (cgroup_limit or read_cgroup_limit())
    if not total:
        return GIB
    return max(total - buffer, total // 2)


def read_cgroup_limit() -> int | None:
    """The memory limit of this container (cgroup v2, else v1), or None when unlimited/unknown."""
    for path in (CGROUP_V2_LIMIT, CGROUP_V1_LIMIT):
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        value = _int_or_none(raw)
        if value and value < _UNLIMITED_V1:
            return value
    return None


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw and raw.strip() else None
    except ValueError:
        return None


_ENV: dict[str, tuple[str, type]] = {
    "port": ("ADAPTER_PORT", int),
    "mem_buffer_bytes": ("MEM_BUFFER_BYTES", int),
    "loading_concurrency": ("LOADING_CONCURRENCY", int),
    "load_timeout_ms": ("LOADTIME_TIMEOUT", int),
    "default_model_size": ("DEFAULT_MODELSIZE", int),
    "size_multiplier": ("MODELSIZE_MULTIPLIER", float),
    "limit_model_concurrency": ("LIMIT_PER_MODEL_CONCURRENCY", int),
    "runtime_version": ("RUNTIME_VERSION", str),
    "model_dir": ("ROOT_MODEL_DIR", Path),
    "tracing": ("MM_TRACING", str),
    "tracing_endpoint": ("MM_TRACING_ENDPOINT", str),
    "log_format": ("MM_LOG_FORMAT", str),
}
