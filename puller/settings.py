"""PullerSettings: the puller's one typed settings object, and the only place the puller reads os.environ.

Built once at start-up (``PullerSettings.from_env()`` in a process, or directly in tests) and passed to
``Puller``. Every field is documented here and in docs/storage.md; environment names follow the
ModelMesh runtime adapter where it had one (``ROOT_MODEL_DIR``, ``STORAGE_CONFIG``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class PullerSettings:
    model_dir: Path
    """Root of pulled models: each model is written to ``<model_dir>/<model_id>/``. Names starting with
    ``.puller-`` are reserved for temp dirs and CA bundles. Env ``ROOT_MODEL_DIR`` (default ``/models``)."""

    local_roots: tuple[Path, ...] = ()
    """Roots that plain local paths and ``file://`` URIs must resolve inside (after symlinks). Empty means
    local paths are refused. Env ``PULLER_LOCAL_ROOTS`` (``os.pathsep``-separated)."""

    storage_config: Path | None = None
    """Storage config: a JSON file (object of key → entry) or a directory with one JSON file per key (a
    mounted Kubernetes secret). Re-read when it changes. Env ``STORAGE_CONFIG`` (ModelMesh mounts it at
    ``/storage-config``)."""

    disk_budget_bytes: int = 0
    """Most bytes the pulled models may take under ``model_dir``; 0 = unlimited. Env ``PULLER_DISK_BUDGET_BYTES``."""

    max_object_bytes: int = 0
    """Largest single object/file accepted; 0 = unlimited. Env ``PULLER_MAX_OBJECT_BYTES``."""

    pvc_mounts_dir: Path = Path("/pvc_mounts")
    """Where ``pvc`` entries given by ``name`` are mounted (``<pvc_mounts_dir>/<name>``). Env ``PVC_MOUNTS_DIR``."""

    connect_timeout_s: float = 10.0
    """Connect timeout for S3/MinIO/HTTP. Env ``PULLER_CONNECT_TIMEOUT_S``."""

    read_timeout_s: float = 60.0
    """Longest wait for the next bytes of a response. Env ``PULLER_READ_TIMEOUT_S``."""

    max_attempts: int = 4
    """Attempts per object on transient errors (5xx, throttling, connection errors, truncation), with
    exponential backoff and full jitter. Env ``PULLER_MAX_ATTEMPTS``."""

    retry_backoff_s: float = 0.5
    """First backoff; doubles each attempt up to ``retry_backoff_max_s``. Env ``PULLER_RETRY_BACKOFF_S``."""

    retry_backoff_max_s: float = 10.0
    """Cap on one backoff. Env ``PULLER_RETRY_BACKOFF_MAX_S``."""

    max_concurrent_pulls: int = 4
    """Distinct models downloading at once (pulls of the same model share one download regardless).
    Env ``PULLER_MAX_CONCURRENT_PULLS``."""

    max_concurrent_files: int = 4
    """Objects of one prefix downloaded in parallel. Env ``PULLER_MAX_CONCURRENT_FILES``."""

    io_threads: int = 8
    """Size of the named ``puller-io`` thread pool that runs blocking storage clients and file work.
    Env ``PULLER_IO_THREADS``."""

    chunk_bytes: int = 1 << 20
    """Streaming chunk size; bounds the memory one download holds. Env ``PULLER_CHUNK_BYTES``."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Unused by the puller; room for callers' annotations without subclassing."""

    @classmethod
    def from_env(cls, **overrides: Any) -> PullerSettings:
        """Build settings from the environment; keyword ``overrides`` win over the environment."""
        env = os.environ
        values: dict[str, Any] = {
            "model_dir": Path(env.get("ROOT_MODEL_DIR", "/models")),
            "pvc_mounts_dir": Path(env.get("PVC_MOUNTS_DIR", "/pvc_mounts")),
        }
        if env.get("STORAGE_CONFIG"):
            values["storage_config"] = Path(env["STORAGE_CONFIG"])
        if env.get("PULLER_LOCAL_ROOTS"):
            values["local_roots"] = tuple(
                Path(p) for p in env["PULLER_LOCAL_ROOTS"].split(os.pathsep) if p.strip()
            )
        for name, conv in _NUMERIC.items():
            raw = env.get(f"PULLER_{name.upper()}")
            if raw not in (None, ""):
                try:
                    values[name] = conv(raw)
                except ValueError as exc:
                    raise ValueError(f"PULLER_{name.upper()}={raw!r} is not a valid {conv.__name__}") from exc
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unknown PullerSettings fields: {sorted(unknown)}")
        settings = cls(**values)
        settings.model_dir = Path(settings.model_dir)
        settings.local_roots = tuple(Path(p) for p in settings.local_roots)
        return settings


_NUMERIC: dict[str, type] = {
    "disk_budget_bytes": int,
    "max_object_bytes": int,
    "connect_timeout_s": float,
    "read_timeout_s": float,
    "max_attempts": int,
    "retry_backoff_s": float,
    "retry_backoff_max_s": float,
    "max_concurrent_pulls": int,
    "max_concurrent_files": int,
    "io_threads": int,
    "chunk_bytes": int,
}
