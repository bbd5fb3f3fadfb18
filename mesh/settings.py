"""MeshSettings: the one typed settings object of a mesh pod, and the only reader of ``os.environ``.

Precedence (lowest to highest): defaults < config file (``--config`` / ``MM_CONFIG_FILE``, JSON object keyed
by field name) < environment variables (``MM_*`` names, ModelMesh's where it had one, modelmesh.md §6, plus
ModelMesh's other names as aliases) < command-line flags. Every field is declared with ``_opt`` (a
``mesh.settingspec`` spec: env var, flag, aliases, range or choices, secret, doc); a bad value stops the pod at
start with ``MM_<NAME>: '<value>' is not <what>``. ``mesh serve --help`` prints the same docs that
docs/configuration.md is generated from (``scripts/gen_config_docs.py``).

``KV_STORE`` (ModelMesh's etcd connection: ``etcd:<json file>`` in etcd-java's format, or
``etcd:<endpoints>[;rootPrefix=<prefix>]``) expands into the etcd settings it names, at its own precedence
level; naming one of them twice in one source is an error, as for any alias.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.settingspec import (
    Alias,
    Given,
    NotA,
    SettingError,
    add_flags,
    default_of,
    failure,
    file_contents,
    from_environment,
    milliseconds_to_seconds,
    port_to_local_address,
    resolve,
    setting,
    socket_path_to_address,
    spec_of,
    specced_fields,
)
from mesh.settingspec import flag_name as _flag_name

__all__ = ["MeshSettings", "SettingError", "add_arguments", "describe", "flag_name", "load_settings"]

#: Declares one setting: ``_opt(default, env, doc, *, flag=None, minimum=, maximum=, positive=, choices=,
#: aliases=, secret=, what=, check=)``. Numeric settings without a range must be >= 0.
_opt = setting

_PORT = {"minimum": 1, "maximum": 65535, "what": "a port number (1-65535)"}
_PORT_OR_OFF = {"minimum": 0, "maximum": 65535, "what": "a port number (0-65535)"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ENDPOINT = re.compile(r"^(https?://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+):\d{1,5}/?$")


def _endpoints(value: list[str]) -> None:
    if not value or not all(_ENDPOINT.match(v) for v in value):
        raise NotA("a comma-separated list of etcd host:port endpoints")


def _address(value: str) -> None:
    if value and not (value.startswith("unix:") or ":" in value):
        raise NotA("a host:port or unix:path address")


def _no_spaces(value: str) -> None:
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise NotA("an etcd key prefix without spaces or control characters")


def _json_object(value: str) -> None:
    if not value.strip():
        return
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        raise NotA("a JSON object of type constraints") from None
    if not isinstance(data, dict):
        raise NotA("a JSON object of type constraints")


def _single_path(text: str) -> str:
    if "," in text:
        raise NotA("a single CA file path (lists are not supported; concatenate the PEM files)")
    return text


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
    port: int = _opt(
        8033, "MM_SVC_GRPC_PORT", "External gRPC port: management + V2 inference + health.", **_PORT
    )
    advertise_address: str = _opt(
        "",
        "MM_ADVERTISE_ADDRESS",
        "host:port peers use to reach this pod (default: MM_LOCATION or host, and port).",
    )
    metrics_port: int = _opt(
        2112, "MM_METRICS_PORT", "Prometheus metrics HTTP port (0 disables).", **_PORT_OR_OFF
    )
    max_message_bytes: int = _opt(
        16 * 1024 * 1024,
        "MM_SVC_GRPC_MAX_MSG_SIZE",
        "Max gRPC message size.",
        minimum=4096,
        maximum=2**31 - 1,
    )
    tls_cert: str = _opt(
        "", "MM_TLS_KEY_CERT_PATH", "PEM certificate for the external listener (enables TLS)."
    )
    tls_key: str = _opt("", "MM_TLS_PRIVATE_KEY_PATH", "PEM private key for the external listener.")
    tls_ca: str = _opt(
        "",
        "MM_TLS_CA_PATH",
        "CA bundle to verify peers (pod-to-pod forwarding over TLS) and client certificates.",
        aliases=[Alias("MM_TLS_TRUST_CERT_PATH", _single_path, note="ModelMesh's name (one file)")],
    )
    tls_client_auth: str = _opt(
        "optional",
        "MM_TLS_CLIENT_AUTH",
        "Client certificates on the TLS listener: none, optional (verified when presented, with MM_TLS_CA_PATH) "
        "or require (mTLS: clients and peers without a certificate from MM_TLS_CA_PATH are refused). "
        "Case-insensitive, so ModelMesh's NONE/OPTIONAL/REQUIRE work.",
        choices=("none", "optional", "require"),
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
        aliases=[
            Alias("MM_TYPE_CONSTRAINTS_PATH", file_contents, note="a file holding the JSON, read at start")
        ],
        check=_json_object,
        what="a JSON object",
    )
    # --- etcd
    etcd_endpoints: list[str] = _opt(
        ["127.0.0.1:2379"],
        "MM_ETCD_ENDPOINTS",
        "etcd host:port list (an https:// prefix turns TLS on).",
        flag="etcd",
        check=_endpoints,
        what="comma-separated host:port list",
    )
    kv_root: str = _opt(
        "/mm/default/",
        "MM_KVSTORE_PREFIX",
        "Root key prefix of this mesh cluster in etcd (under MM_ETCD_ROOT_PREFIX when that is set).",
        check=_no_spaces,
    )
    etcd_ca: str = _opt(
        "", "MM_ETCD_CA_PATH", "CA bundle for TLS to etcd (a path, or PEM text from KV_STORE)."
    )
    etcd_cert: str = _opt("", "MM_ETCD_CERT_PATH", "Client certificate for TLS to etcd.")
    etcd_key: str = _opt("", "MM_ETCD_KEY_PATH", "Client key for TLS to etcd.", secret=True)
    etcd_timeout_s: float = _opt(
        3.0, "MM_ETCD_TIMEOUT_S", "Timeout of one etcd call; management fails fast after.", positive=True
    )
    lease_ttl_s: int = _opt(
        10, "MM_LEASE_TTL_S", "TTL of this pod's etcd lease (instance record liveness).", positive=True
    )
    kv_store: str = _opt(
        "",
        "KV_STORE",
        "ModelMesh's etcd connection: etcd:<JSON file> (etcd-java's format: endpoints, userid, password, "
        "root_prefix, certificate[_file], client_key[_file], client_certificate[_file], override_authority) "
        "or etcd:<endpoints>[;rootPrefix=<prefix>]. Sets the etcd settings it names; naming one of them "
        "again in the same source is an error.",
    )
    etcd_root_prefix: str = _opt(
        "",
        "MM_ETCD_ROOT_PREFIX",
        "etcd namespace put before MM_KVSTORE_PREFIX in every key (KV_STORE's root_prefix).",
        check=_no_spaces,
    )
    etcd_server_name: str = _opt(
        "",
        "MM_ETCD_SERVER_NAME",
        "TLS name to verify etcd's certificate against (KV_STORE's override_authority).",
    )
    etcd_username: str = _opt(
        "",
        "MM_ETCD_USERNAME",
        "etcd user (auth enabled); with MM_ETCD_PASSWORD. Re-authenticates when the token expires.",
    )
    etcd_password: str = _opt(
        "", "MM_ETCD_PASSWORD", "Password of MM_ETCD_USERNAME. Never logged.", secret=True
    )
    etcd_token: str = _opt(
        "",
        "MM_ETCD_TOKEN",
        "A pre-issued etcd auth token (simple or JWT), sent as is, instead of a username and password. Never logged.",
        secret=True,
    )
    etcd_token_path: str = _opt(
        "",
        "MM_ETCD_TOKEN_PATH",
        "File holding an etcd auth token; read at start and again when etcd rejects the token (rotation).",
    )
    # --- runtime
    runtime_address: str = _opt(
        "127.0.0.1:8085",
        "INTERNAL_GRPC_ADDRESS",
        "Runtime SPI (mmesh.ModelRuntime) host:port or unix:path.",
        aliases=[
            Alias("INTERNAL_GRPC_PORT", port_to_local_address, note="port on 127.0.0.1"),
            Alias("INTERNAL_GRPC_SOCKET_PATH", socket_path_to_address, note="unix socket path"),
        ],
        check=_address,
        what="host:port or unix:path",
    )
    serving_address: str = _opt(
        "",
        "INTERNAL_SERVING_GRPC_ADDRESS",
        "Runtime inference address (default: same as the SPI address).",
        aliases=[
            Alias("INTERNAL_SERVING_GRPC_PORT", port_to_local_address, note="port on 127.0.0.1"),
            Alias("INTERNAL_SERVING_GRPC_SOCKET_PATH", socket_path_to_address, note="unix socket path"),
        ],
        check=_address,
        what="host:port or unix:path",
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
    runtime_startup_timeout_s: float = _opt(
        180.0, "MM_RUNTIME_STARTUP_TIMEOUT_S", "Wait for runtime READY.", positive=True
    )
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
        2000, "MM_SCALEUP_RPM_THRESHOLD", "Per-copy requests/min that add a copy.", positive=True
    )
    load_failure_expiry_ms: int = _opt(
        900_000, "MM_LOAD_FAILURE_EXPIRY_TIME_MS", "Expiry of load-failure records."
    )
    max_load_failures: int = _opt(
        3, "MM_MAX_LOAD_FAILURES", "Recent failures after which a model is LOADING_FAILED.", minimum=1
    )
    max_hops: int = _opt(4, "MM_MAX_HOPS", "Max pod-to-pod forwards of one request.", minimum=1, maximum=16)
    peer_connect_timeout_s: float = _opt(
        2.0,
        "MM_PEER_CONNECT_TIMEOUT_S",
        "A peer not connected within this is skipped for the request (another copy or a new load).",
        positive=True,
    )
    peer_hop_fraction: float = _opt(
        0.75,
        "MM_PEER_HOP_FRACTION",
        "Share of a request's remaining deadline that one forward to a pod holding the model may use. The "
        "rest is kept to retry on another copy or a new load when that pod does not answer (a cut link); "
        "1 = the whole deadline. Forwards that ask a pod to load keep the whole deadline.",
        minimum=0.1,
        maximum=1.0,
    )
    stats_tick_s: float = _opt(
        10.0, "MM_STATS_TICK_S", "Request-rate roll-up period (rates cover 6 ticks).", positive=True
    )
    scale_check_interval_s: float = _opt(
        10.0, "MM_SCALE_CHECK_INTERVAL_S", "Period of copy scale-up/down checks.", positive=True
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
    eviction_policy: str = _opt(
        "lru",
        "MM_EVICTION_POLICY",
        "Which local copies go first when a load needs room: lru (ModelMesh's least recently used) or cost "
        "(the least reload time saved per byte and second; 0.84-1.0x LRU's load time in the simulator, and "
        "under sub-second churn of tiny models it ranks hot models by noisy load times: docs/benchmarks.md).",
        choices=("cost", "lru"),
    )
    proactive_loading: bool = _opt(
        False,
        "MM_PROACTIVE_LOADING",
        "The leader fills spare cluster capacity with recently used models that have no copy (never "
        "evicting for them). Off by default: it did not pay off in the simulator (docs/benchmarks.md).",
    )
    idle_unload_s: float = _opt(
        0.0, "MM_IDLE_UNLOAD_S", "Unload copies unused this long (0 = only evict for space)."
    )
    janitor_interval_s: float = _opt(
        30.0, "MM_JANITOR_INTERVAL_S", "Local cache vs registry reconciliation period.", positive=True
    )
    publish_interval_s: float = _opt(
        5.0, "MM_PUBLISH_INTERVAL_S", "Instance-record check period (batched).", positive=True
    )
    request_timeout_s: float = _opt(
        60.0, "MM_REQUEST_TIMEOUT_S", "Default deadline of a routed request.", positive=True
    )
    shutdown_timeout_s: float = _opt(
        30.0,
        "SHUTDOWN_TIMEOUT_S",
        "Graceful shutdown budget (SIGTERM).",
        aliases=[Alias("SHUTDOWN_TIMEOUT_MS", milliseconds_to_seconds, 1000.0, "ModelMesh's, milliseconds")],
    )
    log_level: str = _opt("INFO", "MM_LOG_LEVEL", "Logging level (case-insensitive).", choices=_LOG_LEVELS)
    default_vmodel_owner: str = _opt(
        "",
        "MM_DEFAULT_VMODEL_OWNER",
        "Owner given to vModel requests that name none (ModelMesh's; the serving controller sets it).",
    )
    # --- REST, metrics, health, logs (issue 10)
    rest_port: int = _opt(
        8008,
        "MM_REST_PORT",
        "KServe V2 REST (JSON) listener port, bound on the gRPC host (0 disables).",
        maximum=65535,
    )
    rest_read_timeout_s: float = _opt(
        30.0,
        "MM_REST_READ_TIMEOUT_S",
        "A REST request (head and body) must arrive within this (else 408).",
        positive=True,
    )
    rest_idle_timeout_s: float = _opt(
        60.0,
        "MM_REST_IDLE_TIMEOUT_S",
        "Idle keep-alive REST connections are closed after this.",
        positive=True,
    )
    rest_max_connections: int = _opt(
        1000,
        "MM_REST_MAX_CONNECTIONS",
        "Open REST connections at most; more are answered 503 and closed.",
        positive=True,
    )
    per_model_metrics: bool = _opt(
        False,
        "MM_PER_MODEL_METRICS",
        "Label request and model metrics with modelId/vModelId (ModelMesh's per_model_metrics).",
    )
    per_model_metrics_max: int = _opt(
        100,
        "MM_PER_MODEL_METRICS_MAX",
        "Distinct model ids with their own metric label value; later ids share the value '__other__'.",
    )
    etcd_unhealthy_grace_s: float = _opt(
        30.0, "MM_ETCD_UNHEALTHY_GRACE_S", "Readiness goes NOT_SERVING once etcd is unreachable this long."
    )
    liveness_stall_s: float = _opt(
        10.0,
        "MM_LIVENESS_STALL_S",
        "An event-loop stall this long means wedged: logged with the loop's stack and counted; liveness "
        "probes get no answer while it lasts.",
    )
    health_check_interval_s: float = _opt(
        1.0, "MM_HEALTH_CHECK_INTERVAL_S", "Period of the readiness re-evaluation.", positive=True
    )
    log_format: str = _opt(
        "text", "MM_LOG_FORMAT", "Log lines as text or json (one object per line).", choices=("text", "json")
    )
    log_requests: bool = _opt(
        False,
        "MM_LOG_REQUESTS",
        "One INFO line per inference request (model, vModel, pod, route, method, status, duration).",
    )
    tracing: str = _opt(
        "off",
        "MM_TRACING",
        "OpenTelemetry spans: off, console (JSON on stderr) or otlp (needs opentelemetry-sdk; otlp also "
        "opentelemetry-exporter-otlp-proto-grpc).",
        choices=("off", "console", "otlp"),
    )
    tracing_endpoint: str = _opt(
        "",
        "MM_TRACING_ENDPOINT",
        "OTLP/gRPC collector endpoint for MM_TRACING=otlp (default: the exporter's).",
    )
    # --- data-plane processes (issue 9)
    dataplane_processes: int = _opt(
        1,
        "MM_DATAPLANE_PROCESSES",
        "Processes serving the external port (SO_REUSEPORT): this pod process plus N-1 data-plane workers it "
        "starts and supervises, which serve inference for models loaded here and pass everything else to it "
        "(docs/architecture.md §4.1). 1 = one process. Needs a runtime reached by address (not "
        "MM_RUNTIME_INPROCESS).",
        minimum=1,
        maximum=256,
    )

    @property
    def serving(self) -> str:
        return self.serving_address or self.runtime_address

    @property
    def runtime_env(self) -> dict[str, str]:
        """Environment added for the runtime process this pod starts (absolute paths: it may chdir): its
        storage config, and the pod's tracing and log format when those were set by flag or config file."""
        extra = {"STORAGE_CONFIG": os.path.abspath(self.storage_config)} if self.storage_config else {}
        if self.tracing != "off":
            extra.update(MM_TRACING=self.tracing, MM_TRACING_ENDPOINT=self.tracing_endpoint)
        if self.log_format != "text":
            extra["MM_LOG_FORMAT"] = self.log_format
        return extra

    def runtime_process_env(self) -> dict[str, str]:
        """The whole environment of the runtime process this pod starts: the pod's own, without the etcd
        credentials (the runtime never talks to etcd), plus ``runtime_env``."""
        env = {k: v for k, v in os.environ.items() if k not in _POD_ONLY_SECRETS}
        env.update(self.runtime_env)
        return env

    @property
    def advertised(self) -> str:
        if self.advertise_address:
            return self.advertise_address
        host = self.location or ("127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host)
        return f"{host}:{self.port}"

    def secret_values(self) -> list[str]:
        """The values of the secret settings (etcd password, token, inline key), for log redaction."""
        return [
            str(getattr(self, f.name))
            for f in specced_fields(MeshSettings)
            if spec_of(f).secret and getattr(self, f.name)
        ]

    @property
    def key_root(self) -> str:
        """The cluster's root key prefix: ``etcd_root_prefix`` (if any) then ``kv_root``, as ``/a/b/``."""
        root = self.kv_root.strip().strip("/") or "mm/default"
        if self.etcd_root_prefix.strip("/"):
            root = self.etcd_root_prefix.strip("/") + "/" + root
        return f"/{root}/"


#: Environment variables holding the pod's secrets, kept from the runtime process it starts.
_POD_ONLY_SECRETS = frozenset(
    {spec_of(f).env for f in specced_fields(MeshSettings) if spec_of(f).secret and spec_of(f).env}
    | {"MM_ETCD_USERNAME", "KV_STORE"}
)


def _fields() -> list[dataclasses.Field]:
    return specced_fields(MeshSettings)


def flag_name(f: dataclasses.Field) -> str:
    return _flag_name(f)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (default None, so unset flags do not override env/config)."""
    parser.add_argument("--config", default=None, help="JSON config file (keys are setting names).")
    add_flags(parser, MeshSettings)


# --------------------------------------------------------------------------------------------------------
# KV_STORE (ModelMesh's etcd connection string)

_KV_STORE_WHAT = "etcd:<JSON file> or etcd:<host:port,...>[;rootPrefix=<prefix>]"
#: etcd-java's JSON keys → (our setting, is a file path relative to the JSON's folder)
_ETCD_JSON_KEYS: dict[str, tuple[str, bool]] = {
    "endpoints": ("etcd_endpoints", False),
    "userid": ("etcd_username", False),
    "password": ("etcd_password", False),
    "root_prefix": ("etcd_root_prefix", False),
    "certificate": ("etcd_ca", False),
    "certificate_file": ("etcd_ca", True),
    "client_certificate": ("etcd_cert", False),
    "client_certificate_file": ("etcd_cert", True),
    "client_key": ("etcd_key", False),
    "client_key_file": ("etcd_key", True),
    "override_authority": ("etcd_server_name", False),
}
_SIMPLE_KV_STORE = re.compile(r"^(?P<endpoints>[^;\s]+)(?:;rootPrefix=(?P<prefix>\S+))?$")


def parse_kv_store(text: str) -> dict[str, str]:
    """The etcd settings a ``KV_STORE`` value names (setting name → text). Raises ``NotA``."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind.lower() != "etcd" or not rest.strip():
        if sep and kind.lower() == "zookeeper":
            raise NotA(f"{_KV_STORE_WHAT} (only etcd is supported)")
        raise NotA(_KV_STORE_WHAT)
    rest = rest.strip()
    path = Path(rest)
    if path.is_file():
        return _etcd_json(path)
    m = _SIMPLE_KV_STORE.match(rest)
    if m is None or rest.startswith(("/", ".")):
        raise NotA(f"{_KV_STORE_WHAT} (no such file, and not an endpoint list)")
    out = {"etcd_endpoints": m.group("endpoints")}
    if m.group("prefix"):
        out["etcd_root_prefix"] = m.group("prefix")
    return out


def _etcd_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotA(f"a readable etcd connection JSON file ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise NotA("an etcd connection JSON file holding an object")
    unknown = sorted(set(data) - set(_ETCD_JSON_KEYS) - {"compose_deployment"})
    if unknown:
        raise NotA(f"an etcd connection JSON file with known keys only (unknown: {', '.join(unknown)})")
    if "compose_deployment" in data:
        raise NotA("an etcd connection JSON file without compose_deployment (not supported)")
    if not isinstance(data.get("endpoints"), str) or not data["endpoints"].strip():
        raise NotA("an etcd connection JSON file with an endpoints string")
    out: dict[str, str] = {}
    for key, value in data.items():
        setting_name, is_file = _ETCD_JSON_KEYS[key]
        if not isinstance(value, str):
            raise NotA(f"an etcd connection JSON file whose {key} is a string")
        if setting_name in out:
            raise NotA(f"an etcd connection JSON file naming {setting_name} once (two keys set it)")
        if is_file and not os.path.isabs(value):
            value = str(path.parent / value)
        out[setting_name] = value
    return out


def _expand_kv_store(given: dict[str, Given]) -> None:
    """Replace a ``kv_store`` value by the etcd settings it names, in the same source (in place)."""
    g = given.get("kv_store")
    if g is None or not str(g.raw).strip():
        return
    by_name = {f.name: f for f in _fields()}
    try:
        names = parse_kv_store(str(g.raw))
    except NotA as exc:
        raise failure(g.source, by_name["kv_store"], g.raw, exc.what) from None
    for name, text in names.items():
        if name in given:
            raise SettingError(
                f"{g.source} and {given[name].source} are both set and name the same setting ({name}): "
                "set only one"
            )
        given[name] = Given(text, f"{g.source} ({name})")


# --------------------------------------------------------------------------------------------------------
# Loading


def _from_config_file(config_path: str) -> dict[str, Given]:
    try:
        data = json.loads(Path(config_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SettingError(f"cannot read config file {config_path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingError(f"config file {config_path} must hold a JSON object of settings")
    unknown = set(data) - {f.name for f in _fields()}
    if unknown:
        raise SettingError(f"unknown settings in {config_path}: {', '.join(sorted(unknown))}")
    return {k: Given(v, f"{k} (in {config_path})") for k, v in data.items()}


def load_settings(
    args: argparse.Namespace | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> MeshSettings:
    """Build settings from config file, environment and parsed flags (and explicit overrides, for tests).

    Every given value is converted and checked, including one a higher source overrides, so a typo never
    hides. Raises ``SettingError`` with ``<source>: '<value>' is not <what>``."""
    env = os.environ if environ is None else environ
    by_name = {f.name: f for f in _fields()}
    sources: list[dict[str, Given]] = []
    config_path = (getattr(args, "config", None) if args else None) or env.get("MM_CONFIG_FILE")
    if config_path:
        sources.append(_from_config_file(config_path))
    sources.append(from_environment(MeshSettings, env))
    if args is not None:
        flags = {}
        for f in _fields():
            v = getattr(args, f.name, None)
            if v is not None:
                flags[f.name] = Given(v, flag_name(f))
        sources.append(flags)
    if overrides:
        for k in overrides:
            if k not in by_name:
                raise SettingError(f"unknown setting {k!r}")
        sources.append({k: Given(v, k) for k, v in overrides.items()})
    values: dict[str, Any] = {}
    for given in sources:
        _expand_kv_store(given)
        for name, g in given.items():
            values[name] = resolve(by_name[name], g)
    settings = MeshSettings(**values)
    _check_together(settings)
    return settings


def _check_together(s: MeshSettings) -> None:
    """Settings that only make sense in pairs or alone."""
    if bool(s.tls_cert) != bool(s.tls_key):
        raise SettingError("MM_TLS_KEY_CERT_PATH and MM_TLS_PRIVATE_KEY_PATH must be set together")
    if s.tls_client_auth == "require" and s.tls_cert and not s.tls_ca:
        raise SettingError("MM_TLS_CLIENT_AUTH: 'require' needs MM_TLS_CA_PATH to verify client certificates")
    if bool(s.etcd_cert) != bool(s.etcd_key):
        raise SettingError("MM_ETCD_CERT_PATH and MM_ETCD_KEY_PATH must be set together")
    if bool(s.etcd_username) != bool(s.etcd_password):
        raise SettingError("MM_ETCD_USERNAME and MM_ETCD_PASSWORD must be set together")
    if s.etcd_token and s.etcd_token_path:
        raise SettingError("MM_ETCD_TOKEN and MM_ETCD_TOKEN_PATH are both set: set only one")
    if s.etcd_username and (s.etcd_token or s.etcd_token_path):
        raise SettingError("MM_ETCD_USERNAME and an etcd token are both set: use a password or a token")
    if s.dataplane_processes > 1 and s.runtime_inprocess:
        raise SettingError(
            "MM_DATAPLANE_PROCESSES > 1 needs a runtime reached by address: workers cannot reach a runtime "
            "inside the pod process (MM_RUNTIME_INPROCESS)"
        )


def describe() -> Sequence[tuple[str, str, str, str]]:
    """(name, flag, env, doc+default) rows, for --help and tests; docs use ``settingspec.describe_fields``."""
    rows = []
    for f in _fields():
        spec = spec_of(f)
        rows.append((f.name, flag_name(f), spec.env or "", f"{spec.doc} Default: {default_of(f)!r}"))
    return rows
