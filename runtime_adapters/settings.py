"""RuntimeSettings: the runtime process's one typed settings object; the only module here reading os.environ.

Declared with ``mesh.settingspec`` like the pod's settings, so values convert, fail (``LOADTIME_TIMEOUT:
'abc' is not a number``) and are documented the same way. Precedence: flags (``add_arguments`` /
``from_args``, or keyword ``overrides``) > environment > cgroup memory limit (capacity only) > defaults.
Environment names follow the ModelMesh runtime adapters (modelmesh.md §6 "Runtime-reported values"):
``CONTAINER_MEM_REQ_BYTES``, ``MEM_BUFFER_BYTES``, ``LOADING_CONCURRENCY``, ``LOADTIME_TIMEOUT``,
``DEFAULT_MODELSIZE``, ``MODELSIZE_MULTIPLIER``, ``LIMIT_PER_MODEL_CONCURRENCY``, ``RUNTIME_VERSION``,
``ROOT_MODEL_DIR``, ``ADAPTER_PORT``; the others are ours (``ADAPTER_*``, ``RUNTIME_*``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mesh.logs import configure_logging
from mesh.settingspec import (
    Given,
    SettingError,
    add_flags,
    build,
    flag_name,
    from_environment,
    setting,
    specced_fields,
)
from puller.settings import PullerSettings

MIB = 1 << 20
GIB = 1 << 30
CGROUP_V2_LIMIT = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
_UNLIMITED_V1 = 1 << 60  # cgroup v1 reports "no limit" as a page-rounded 2^63
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass
class RuntimeSettings:
    host: str = setting(
        "127.0.0.1", "ADAPTER_HOST", "Address the gRPC server binds (SPI and V2 inference share the port)."
    )
    port: int = setting(
        8085, "ADAPTER_PORT", "gRPC port; 0 picks a free one.", maximum=65535, what="a port number (0-65535)"
    )
    socket_path: str = setting(
        "", "ADAPTER_SOCKET_PATH", "Also listen on this unix socket when set.", flag="socket"
    )
    capacity_bytes: int = setting(
        0,
        "RUNTIME_CAPACITY_BYTES",
        "Model memory reported to the mesh. 0 = derive: (`CONTAINER_MEM_REQ_BYTES` or the cgroup memory "
        "limit) minus `MEM_BUFFER_BYTES` (at least half of it), else 1 GiB.",
        flag="capacity",
    )
    container_mem_bytes: int = setting(
        0,
        "CONTAINER_MEM_REQ_BYTES",
        "The runtime container's memory request, for the derived capacity (0 = use the cgroup limit).",
    )
    mem_buffer_bytes: int = setting(
        256 * MIB, "MEM_BUFFER_BYTES", "Memory kept back for the runtime itself when capacity is derived."
    )
    loading_concurrency: int = setting(
        1,
        "LOADING_CONCURRENCY",
        "maxLoadingConcurrency reported to the mesh; also bounds parallel loads here.",
        minimum=1,
    )
    load_timeout_ms: int = setting(
        90_000,
        "LOADTIME_TIMEOUT",
        "Deadline for pull + load of one model; reported as modelLoadingTimeoutMs.",
        minimum=100,
    )
    default_model_size: int = setting(
        1_000_000,
        "DEFAULT_MODELSIZE",
        "Size used when nothing better is known (defaultModelSizeInBytes).",
        minimum=1,
    )
    size_multiplier: float = setting(
        0.0,
        "MODELSIZE_MULTIPLIER",
        "When > 0, replaces every per-type default multiplier of disk size (see sizing.py).",
    )
    limit_model_concurrency: int = setting(
        0,
        "LIMIT_PER_MODEL_CONCURRENCY",
        "Per-model concurrency returned in LoadModelResponse.maxConcurrency; 0 = unlimited.",
    )
    runtime_version: str = setting(
        "", "RUNTIME_VERSION", "runtimeVersion reported to the mesh; empty = the package's own."
    )
    model_dir: Path | None = setting(
        None,
        "ROOT_MODEL_DIR",
        "Where the puller writes models (`<model_dir>/<model_id>/`); unset = the puller's default.",
    )
    local_roots: tuple[Path, ...] = setting(
        (),
        "PULLER_LOCAL_ROOTS",
        "Roots local model paths must stay inside (given to the puller). The flag repeats, one root each.",
        flag="local_root",
    )
    storage_config: Path | None = setting(
        None, "STORAGE_CONFIG", "Storage config file/dir for the puller (see docs/storage.md)."
    )
    predict_threads: int = setting(
        0, "RUNTIME_PREDICT_THREADS", "Threads of the `rt-predict` executor; 0 = min(4, CPU count)."
    )
    max_message_bytes: int = setting(
        16 * MIB,
        "ADAPTER_MAX_MSG_SIZE",
        "Largest gRPC message accepted or sent (ModelMesh's default is 16 MiB).",
        minimum=4096,
        maximum=2**31 - 1,
    )
    grace_s: float = setting(5.0, "ADAPTER_GRACE_S", "Grace period for in-flight RPCs at shutdown.")
    tls_cert: Path | None = setting(
        None, "ADAPTER_TLS_CERT", "Server certificate (PEM); with `tls_key` the port is served over TLS."
    )
    tls_key: Path | None = setting(None, "ADAPTER_TLS_KEY", "Server private key (PEM).")
    log_level: str = setting("INFO", "LOG_LEVEL", "Log level of the runtime process.", choices=_LOG_LEVELS)

    tracing: str = setting(
        "off",
        "MM_TRACING",
        "OpenTelemetry spans of SPI/inference calls and pulls: off, console or otlp (needs the SDK; see "
        "mesh/tracing.py). Inherited from the pod that starts the runtime.",
        choices=("off", "console", "otlp"),
    )
    tracing_endpoint: str = setting(
        "", "MM_TRACING_ENDPOINT", "OTLP/gRPC endpoint for `tracing=otlp` (empty: the exporter's default)."
    )
    log_format: str = setting(
        "text",
        "MM_LOG_FORMAT",
        "Log lines as text or json; inherited from the pod.",
        choices=("text", "json"),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> RuntimeSettings:
        """Build from the environment; keyword overrides (flag values, by field name) win. ``None`` overrides
        are ignored. Raises ``SettingError`` (a ``ValueError``) naming the variable or flag and the value."""
        env = os.environ if env is None else env
        # A blank variable counts as unset here, as in the ModelMesh adapters' env config.
        given = from_environment(cls, {k: v for k, v in env.items() if v.strip()})
        by_name = {f.name: f for f in fields(cls)}
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in by_name:
                raise TypeError(f"unknown RuntimeSettings fields: [{name!r}]")
            given[name] = Given(value, flag_name(by_name[name]))
        settings = build(cls, given)
        if settings.capacity_bytes <= 0:
            settings.capacity_bytes = derive_capacity(
                container_mem=settings.container_mem_bytes or None, buffer=settings.mem_buffer_bytes
            )
        settings.validate()
        return settings

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> RuntimeSettings:
        """From flags added by ``add_arguments`` (unset flags are None), over the environment."""
        return cls.from_env(env, **{f.name: getattr(args, f.name, None) for f in specced_fields(cls)})

    def validate(self) -> None:
        """Checks across settings (each value's own range is checked when it is read)."""
        if self.capacity_bytes < 1:
            raise SettingError(f"--capacity: '{self.capacity_bytes}' is not a positive number")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingError("--tls-cert and --tls-key must be given together")


def add_arguments(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = ()) -> None:
    """One flag per runtime setting (default None: unset flags do not override the environment)."""
    add_flags(parser, RuntimeSettings, exclude=exclude, repeatable=("local_roots",))


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


def puller_settings_for(settings: RuntimeSettings, args: argparse.Namespace) -> PullerSettings:
    """The puller's settings in a runtime process: its ``--puller-*`` flags over the environment, and the
    folders the runtime owns (model dir, local roots, storage config) taken from the runtime's settings."""
    owned: dict[str, Any] = {}
    if settings.model_dir is not None:
        owned["model_dir"] = settings.model_dir
    if settings.local_roots:
        owned["local_roots"] = tuple(p.resolve() for p in settings.local_roots)
    if settings.storage_config is not None:
        owned["storage_config"] = settings.storage_config
    return PullerSettings.from_args(args, **owned)


def settings_or_usage_error(
    args: argparse.Namespace, build: Callable[[argparse.Namespace], tuple[RuntimeSettings, PullerSettings]]
) -> tuple[RuntimeSettings, PullerSettings]:
    """A runtime process's start: ``build(args)``, then its logging. A bad setting ends the process with
    status 2 and the message naming it on stderr, as argparse does for a bad flag."""
    try:
        settings, puller_settings = build(args)
        configure_logging(settings.log_level, settings.log_format, {"component": "runtime"})
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings, puller_settings
