"""PullerSettings: the puller's one typed settings object, and the only place the puller reads os.environ.

Built once at start-up (``PullerSettings.from_env()`` in a process, or directly in tests) and passed to
``Puller``. Declared with ``mesh.settingspec`` like the pod's and the runtime's settings, so a bad value
fails the same way (``PULLER_MAX_ATTEMPTS: 'many' is not a number``) and docs/configuration.md lists every
field; the runtime processes take each as a ``--puller-*`` flag (``add_arguments``). Environment names follow the ModelMesh runtime adapter where it had one (``ROOT_MODEL_DIR``,
``STORAGE_CONFIG``; its ``STORAGE_CONFIG_DIR`` is accepted as an alias). A blank variable counts as unset.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mesh.settingspec import (
    Alias,
    Given,
    add_flags,
    build,
    flag_name,
    from_environment,
    setting,
    specced_fields,
)


@dataclass
class PullerSettings:
    model_dir: Path = setting(
        Path("/models"),
        "ROOT_MODEL_DIR",
        "Root of pulled models: each model is written to `<model_dir>/<model_id>/`. Names starting with "
        "`.puller-` are reserved for temp dirs and CA bundles.",
    )
    local_roots: tuple[Path, ...] = setting(
        (),
        "PULLER_LOCAL_ROOTS",
        "Roots that plain local paths and `file://` URIs must resolve inside (after symlinks). Empty means "
        "local paths are refused.",
        flag="local_root",
    )
    storage_config: Path | None = setting(
        None,
        "STORAGE_CONFIG",
        "Storage config: a JSON file (object of key → entry) or a directory with one JSON file per key (a "
        "mounted Kubernetes secret). Re-read when it changes (ModelMesh mounts it at `/storage-config`).",
        aliases=[Alias("STORAGE_CONFIG_DIR", note="ModelMesh puller's name")],
    )
    disk_budget_bytes: int = setting(
        0,
        "PULLER_DISK_BUDGET_BYTES",
        "Most bytes the pulled models may take under `model_dir`; 0 = unlimited.",
        flag="puller_disk_budget_bytes",
    )
    max_object_bytes: int = setting(
        0,
        "PULLER_MAX_OBJECT_BYTES",
        "Largest single object/file accepted; 0 = unlimited.",
        flag="puller_max_object_bytes",
    )
    pvc_mounts_dir: Path = setting(
        Path("/pvc_mounts"),
        "PVC_MOUNTS_DIR",
        "Where `pvc` entries given by `name` are mounted (`<pvc_mounts_dir>/<name>`).",
        flag="puller_pvc_mounts_dir",
    )
    connect_timeout_s: float = setting(
        10.0,
        "PULLER_CONNECT_TIMEOUT_S",
        "Connect timeout for S3/MinIO/HTTP.",
        positive=True,
        flag="puller_connect_timeout_s",
    )
    read_timeout_s: float = setting(
        60.0,
        "PULLER_READ_TIMEOUT_S",
        "Longest wait for the next bytes of a response.",
        positive=True,
        flag="puller_read_timeout_s",
    )
    max_attempts: int = setting(
        4,
        "PULLER_MAX_ATTEMPTS",
        "Attempts per object on transient errors (5xx, throttling, connection errors, truncation), with "
        "exponential backoff and full jitter.",
        minimum=1,
        maximum=100,
        flag="puller_max_attempts",
    )
    retry_backoff_s: float = setting(
        0.5,
        "PULLER_RETRY_BACKOFF_S",
        "First backoff; doubles each attempt up to `retry_backoff_max_s`.",
        flag="puller_retry_backoff_s",
    )
    retry_backoff_max_s: float = setting(
        10.0, "PULLER_RETRY_BACKOFF_MAX_S", "Cap on one backoff.", flag="puller_retry_backoff_max_s"
    )
    max_concurrent_pulls: int = setting(
        4,
        "PULLER_MAX_CONCURRENT_PULLS",
        "Distinct models downloading at once (pulls of the same model share one download regardless).",
        minimum=1,
        flag="puller_max_concurrent_pulls",
    )
    max_concurrent_files: int = setting(
        4,
        "PULLER_MAX_CONCURRENT_FILES",
        "Objects of one prefix downloaded in parallel.",
        minimum=1,
        flag="puller_max_concurrent_files",
    )
    io_threads: int = setting(
        8,
        "PULLER_IO_THREADS",
        "Size of the named `puller-io` thread pool that runs blocking storage clients and file work.",
        minimum=1,
        flag="puller_io_threads",
    )
    chunk_bytes: int = setting(
        1 << 20,
        "PULLER_CHUNK_BYTES",
        "Streaming chunk size; bounds the memory one download holds.",
        minimum=1024,
        maximum=1 << 30,
        flag="puller_chunk_bytes",
    )
    extra: dict[str, Any] = field(default_factory=dict)
    """Unused by the puller; room for callers' annotations without subclassing."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> PullerSettings:
        """From flags added by ``add_arguments`` (unset ones are None) and ``overrides``, over the env."""
        flags = {f.name: getattr(args, f.name, None) for f in specced_fields(cls)}
        flags = {k: v for k, v in flags.items() if v is not None}
        return cls.from_env(**{**flags, **overrides})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> PullerSettings:
        """Build settings from the environment; keyword ``overrides`` (typed values, by field name) win.
        Raises ``SettingError`` (a ``ValueError``) naming the variable and the value."""
        env = os.environ if env is None else env
        given = from_environment(cls, {k: v for k, v in env.items() if v.strip()})
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown PullerSettings fields: {sorted(unknown)}")
        fixed = {k: v for k, v in overrides.items() if k == "extra"}
        by_name = {f.name: f for f in fields(cls)}
        for name, value in overrides.items():
            if name != "extra":
                given[name] = Given(value, flag_name(by_name[name]))
        settings = build(cls, given, fixed=fixed)
        settings.model_dir = Path(settings.model_dir)
        settings.local_roots = tuple(Path(p) for p in settings.local_roots)
        return settings


#: Settings the runtime sets from its own flags (``--model-dir``, ``--local-root``, ``--storage-config``).
RUNTIME_OWNED = ("model_dir", "local_roots", "storage_config")


def add_arguments(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = RUNTIME_OWNED) -> None:
    """The puller's flags on a runtime process (``--puller-*``; default None, so the environment stays)."""
    add_flags(parser, PullerSettings, exclude=exclude)
