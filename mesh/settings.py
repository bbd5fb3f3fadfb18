"""MeshSettings: the one typed settings object of a mesh pod, and the only reader of ``os.environ``.

Precedence (lowest to highest): defaults < config file (``--config`` / ``MM_CONFIG_FILE``, JSON object keyed
by field name) < environment variables (``MM_*`` names, ModelMesh's where it had one, modelmesh.md §6) <
command-line flags. Every field documents itself through ``field(metadata=...)``; ``mesh serve --help``
prints them, and docs/configuration.md is generated from the same table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _opt(default: Any, env: str | None, doc: str, *, flag: str | None = None) -> Any:
    meta = {"env": env, "doc": doc, "flag": flag}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class MeshSettings:
    # --- identity and listeners
    instance_id: str = _opt(
        "", "MM_INSTANCE_ID", "This pod's id (default: last 12 chars of HOSTNAME + suffix)."
    )
    hostname: str = _opt(
        "", "HOSTNAME", "Host (Kubernetes pod) name, for the default instance id (default: the system's)."
    )
    host: str = _opt("0.0.0.0", "MM_SVC_GRPC_HOST", "Address the external gRPC server binds.")
    port: int = _opt(8033, "MM_SVC_GRPC_PORT", "External gRPC port: management + V2 inference + health.")
    advertise_address: str = _opt(
        "",
        "MM_ADVERTISE_ADDRESS",
        "host:port peers use to reach this pod (default: MM_LOCATION or host, and port).",
    )
    metrics_port: int = _opt(2112, "MM_METRICS_PORT", "Prometheus metrics HTTP port (0 disables).")
    max_message_bytes: int = _opt(16 * 1024 * 1024, "MM_SVC_GRPC_MAX_MSG_SIZE", "Max gRPC message size.")
    tls_cert: str = _opt(
        "", "MM_TLS_KEY_CERT_PATH", "PEM certificate for the external listener (enables TLS)."
    )
    tls_key: str = _opt("", "MM_TLS_PRIVATE_KEY_PATH", "PEM private key for the external listener.")
    tls_ca: str = _opt("", "MM_TLS_CA_PATH", "CA bundle to verify peers (pod-to-pod forwarding over TLS).")
    tls_client_auth: str = _opt(
        "optional",
        "MM_TLS_CLIENT_AUTH",
        "Client certificates on the TLS listener: none, optional (verified when presented, with MM_TLS_CA_PATH) "
        "or require (mTLS: clients and peers without a certificate from MM_TLS_CA_PATH are refused).",
    )
    peer_secret_path: str = _opt(
        "",
        "MM_PEER_SECRET_PATH",
        "File holding the cluster's peer secret (internal metadata is honoured only with it); default: a "
        "random secret created once in etcd by the first pod.",
    )
    # --- cluster placement attributes
    zone: str = _opt("", "MM_ZONE", "Zone label published in the instance record.")
    location: str = _opt("", "MM_LOCATION", "Node address/location published in the instance record.")
    labels: list[str] = _opt([], "MM_LABELS", "Comma-separated placement labels of this pod.")
    type_constraints: str = _opt(
        "",
        "MM_TYPE_CONSTRAINTS",
        'JSON {"<type>": {"required": [...], "preferred": [...]}, "_default": {...}}.',
    )
    # --- etcd
    etcd_endpoints: list[str] = _opt(
        ["127.0.0.1:2379"], "MM_ETCD_ENDPOINTS", "etcd host:port list.", flag="etcd"
    )
    kv_root: str = _opt("/mm/default/", "MM_KVSTORE_PREFIX", "Root key prefix of this mesh cluster in etcd.")
    etcd_ca: str = _opt("", "MM_ETCD_CA_PATH", "CA bundle for TLS to etcd.")
    etcd_cert: str = _opt("", "MM_ETCD_CERT_PATH", "Client certificate for TLS to etcd.")
    etcd_key: str = _opt("", "MM_ETCD_KEY_PATH", "Client key for TLS to etcd.")
    etcd_timeout_s: float = _opt(
        3.0, "MM_ETCD_TIMEOUT_S", "Timeout of one etcd call; management fails fast after."
    )
    lease_ttl_s: int = _opt(10, "MM_LEASE_TTL_S", "TTL of this pod's etcd lease (instance record liveness).")
    # --- runtime
    runtime_address: str = _opt(
        "127.0.0.1:8085", "INTERNAL_GRPC_ADDRESS", "Runtime SPI (mmesh.ModelRuntime) host:port or unix:path."
    )
    serving_address: str = _opt(
        "", "INTERNAL_SERVING_GRPC_ADDRESS", "Runtime inference address (default: same as the SPI address)."
    )
    runtime_cmd: str = _opt(
        "", "MM_RUNTIME_CMD", "Command line of a runtime process this pod starts and supervises (optional)."
    )
    runtime_inprocess: str = _opt(
        "",
        "MM_RUNTIME_INPROCESS",
        "Run the runtime inside the pod process instead: a module and its flags, e.g. "
        "'runtime_adapters.builtin.inprocess --capacity 268435456' (no second process, no SPI/inference hop; the "
        "runtime's crashes and CPU are the pod's: docs/runtimes.md).",
    )
    storage_config: str = _opt(
        "",
        "STORAGE_CONFIG",
        "Storage config (JSON file, or directory with one file per key) for the runtime this pod starts "
        "(passed to it as STORAGE_CONFIG).",
    )
    runtime_startup_timeout_s: float = _opt(180.0, "MM_RUNTIME_STARTUP_TIMEOUT_S", "Wait for runtime READY.")
    capacity_bytes: int = _opt(
        0, "MM_CAPACITY_BYTES", "Override the runtime-reported cache capacity (0 = use runtime's)."
    )
    default_model_size: int = _opt(
        0, "MM_DEFAULT_MODEL_SIZE", "Override the default predicted size (0 = runtime's)."
    )
    load_timeout_ms: int = _opt(
        0, "MM_LOAD_TIMEOUT_MS", "Override the runtime's load timeout (0 = runtime's)."
    )
    # --- behaviour
    scaleup_rpm_threshold: int = _opt(
        2000, "MM_SCALEUP_RPM_THRESHOLD", "Per-copy requests/min that add a copy."
    )
    load_failure_expiry_ms: int = _opt(
        900_000, "MM_LOAD_FAILURE_EXPIRY_TIME_MS", "Expiry of load-failure records."
    )
    max_load_failures: int = _opt(
        3, "MM_MAX_LOAD_FAILURES", "Recent failures after which a model is LOADING_FAILED."
    )
    max_hops: int = _opt(4, "MM_MAX_HOPS", "Max pod-to-pod forwards of one request.")
    peer_connect_timeout_s: float = _opt(
        2.0,
        "MM_PEER_CONNECT_TIMEOUT_S",
        "A peer not connected within this is skipped for the request (another copy or a new load).",
    )
    stats_tick_s: float = _opt(10.0, "MM_STATS_TICK_S", "Request-rate roll-up period (rates cover 6 ticks).")
    scale_check_interval_s: float = _opt(
        10.0, "MM_SCALE_CHECK_INTERVAL_S", "Period of copy scale-up/down checks."
    )
    second_copy_after_s: float = _opt(
        420.0, "MM_SECOND_COPY_AFTER_S", "Continuous use after which a single-copy model gets a second copy."
    )
    extra_copy_idle_s: float = _opt(
        600.0, "MM_EXTRA_COPY_IDLE_S", "An extra copy (beyond the first/min) unused this long is removed."
    )
    replace_lost_models: bool = _opt(
        True,
        "MM_REPLACE_LOST_MODELS",
        "Leader reloads elsewhere models whose only copies were on a dead pod.",
    )
    idle_unload_s: float = _opt(
        0.0, "MM_IDLE_UNLOAD_S", "Unload copies unused this long (0 = only evict for space)."
    )
    janitor_interval_s: float = _opt(
        30.0, "MM_JANITOR_INTERVAL_S", "Local cache vs registry reconciliation period."
    )
    publish_interval_s: float = _opt(5.0, "MM_PUBLISH_INTERVAL_S", "Instance-record check period (batched).")
    request_timeout_s: float = _opt(60.0, "MM_REQUEST_TIMEOUT_S", "Default deadline of a routed request.")
    shutdown_timeout_s: float = _opt(30.0, "SHUTDOWN_TIMEOUT_S", "Graceful shutdown budget (SIGTERM).")
    ready_etcd_grace_s: float = _opt(
        30.0,
        "MM_READY_ETCD_GRACE_S",
        "Readiness (grpc.health.v1 service '') turns NOT_SERVING once etcd has been lost this long.",
    )
    log_level: str = _opt("INFO", "MM_LOG_LEVEL", "Logging level.")
    # --- data-plane processes (issue 9)
    dataplane_processes: int = _opt(
        1,
        "MM_DATAPLANE_PROCESSES",
        "Processes serving the external port (SO_REUSEPORT): this pod process plus N-1 data-plane workers it "
        "starts and supervises, which serve inference for models loaded here and pass everything else to it "
        "(docs/architecture.md §4.1). 1 = one process. Needs a runtime reached by address (not "
        "MM_RUNTIME_INPROCESS).",
    )

    @property
    def serving(self) -> str:
        return self.serving_address or self.runtime_address

    @property
    def runtime_env(self) -> dict[str, str]:
        """Environment added for the runtime process this pod starts (absolute paths: it may chdir)."""
        return {"STORAGE_CONFIG": os.path.abspath(self.storage_config)} if self.storage_config else {}

    @property
    def advertised(self) -> str:
        if self.advertise_address:
            return self.advertise_address
        host = self.location or ("127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host)
        return f"{host}:{self.port}"


def _fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(MeshSettings))


def _convert(f: dataclasses.Field, value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind.startswith("list"):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    if kind == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"not an integer: {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"not a number: {value!r}")
        return float(value)
    if kind == "bool":
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    return str(value)


def flag_name(f: dataclasses.Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (default None, so unset flags do not override env/config)."""
    parser.add_argument("--config", default=None, help="JSON config file (keys are setting names).")
    for f in _fields():
        env = f.metadata.get("env")
        parser.add_argument(
            flag_name(f), dest=f.name, default=None, help=f"{f.metadata['doc']} [env {env}]" if env else None
        )


def load_settings(
    args: argparse.Namespace | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> MeshSettings:
    """Build settings from config file, environment and parsed flags (and explicit overrides, for tests)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_path = (getattr(args, "config", None) if args else None) or env.get("MM_CONFIG_FILE")
    if config_path:
        try:
            data = json.loads(Path(config_path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read config file {config_path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config file {config_path} must hold a JSON object of settings")
        unknown = set(data) - {f.name for f in _fields()}
        if unknown:
            raise ValueError(f"unknown settings in {config_path}: {', '.join(sorted(unknown))}")
        values.update(data)
    for f in _fields():
        name = f.metadata.get("env")
        if name and name in env:
            values[f.name] = env[name]
    if args is not None:
        for f in _fields():
            v = getattr(args, f.name, None)
            if v is not None:
                values[f.name] = v
    if overrides:
        values.update(overrides)
    converted = {}
    by_name = {f.name: f for f in _fields()}
    for k, v in values.items():
        if k not in by_name:
            raise ValueError(f"unknown setting {k!r}")
        try:
            converted[k] = _convert(by_name[k], v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid value for setting {k}: {v!r}") from exc
    return MeshSettings(**converted)


def describe() -> Sequence[tuple[str, str, str, str]]:
    """(name, flag, env, doc+default) rows, for docs and --help."""
    rows = []
    for f in _fields():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append(
            (f.name, flag_name(f), f.metadata.get("env") or "", f"{f.metadata['doc']} Default: {default!r}")
        )
    return rows
