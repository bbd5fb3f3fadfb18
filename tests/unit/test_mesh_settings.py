"""mesh.settings: precedence defaults < config file < env < flags, conversion, errors, describe()."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.redact import install_log_redaction
from mesh.settings import MeshSettings, SettingError, add_arguments, describe, flag_name, load_settings
from mesh.settingspec import spec_of

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def config(tmp_path: Path, data) -> str:
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_defaults_with_empty_environment() -> None:
    s = load_settings(environ={})
    assert s == MeshSettings()
    assert s.port == 8033 and s.etcd_endpoints == ["127.0.0.1:2379"] and s.labels == []
    assert load_settings(parse([]), environ={}) == MeshSettings()


def test_list_defaults_are_not_shared() -> None:
    a, b = MeshSettings(), MeshSettings()
    assert a.etcd_endpoints == b.etcd_endpoints and a.etcd_endpoints is not b.etcd_endpoints


def test_precedence(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"port": 1001, "metrics_port": 2001, "max_hops": 7, "zone": "cfg"})
    env = {"MM_CONFIG_FILE": cfg, "MM_SVC_GRPC_PORT": "1002", "MM_METRICS_PORT": "2002", "MM_ZONE": "env"}
    s = load_settings(parse(["--port", "1003"]), environ=env)
    assert s.port == 1003  # flag > env > config
    assert s.metrics_port == 2002  # env > config
    assert s.max_hops == 7  # config > default
    assert s.zone == "env"
    assert s.log_level == "INFO"  # default
    # explicit overrides win over everything
    assert load_settings(parse(["--port", "1003"]), environ=env, overrides={"port": 1004}).port == 1004


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    a = config(tmp_path, {"zone": "from-env-file"})
    b = tmp_path / "b.json"
    b.write_text('{"zone": "from-flag-file"}')
    s = load_settings(parse(["--config", str(b)]), environ={"MM_CONFIG_FILE": a})
    assert s.zone == "from-flag-file"


def test_unset_flags_do_not_override_env() -> None:
    s = load_settings(parse(["--zone", "z"]), environ={"MM_SVC_GRPC_PORT": "9999"})
    assert s.port == 9999 and s.zone == "z"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a:1", ["a:1"]),
        ("a:1,b:2", ["a:1", "b:2"]),
        (" a:1 , b:2 ,, ", ["a:1", "b:2"]),
        ("http://a:1,https://b:2", ["http://a:1", "https://b:2"]),
    ],
)
def test_list_parsing(raw: str, expected: list[str]) -> None:
    assert load_settings(environ={"MM_ETCD_ENDPOINTS": raw}).etcd_endpoints == expected
    assert load_settings(parse(["--etcd", raw]), environ={}).etcd_endpoints == expected
    assert load_settings(environ={"MM_LABELS": raw}).labels == expected


@pytest.mark.parametrize("raw", ["", ",", "a", "a:b", "a:1,b", "a b:1"])
def test_etcd_endpoints_must_be_host_port(raw: str) -> None:
    with pytest.raises(SettingError) as e:
        load_settings(environ={"MM_ETCD_ENDPOINTS": raw})
    assert (
        e.value.message
        == f"MM_ETCD_ENDPOINTS: '{raw}' is not a comma-separated list of etcd host:port endpoints"
    )


def test_empty_labels() -> None:
    assert load_settings(environ={"MM_LABELS": ""}).labels == []
    assert load_settings(environ={"MM_LABELS": ","}).labels == []


def test_list_from_config_file(tmp_path: Path) -> None:
    s = load_settings(environ={"MM_CONFIG_FILE": config(tmp_path, {"labels": ["x", "y"]})})
    assert s.labels == ["x", "y"]
    s = load_settings(environ={"MM_CONFIG_FILE": config(tmp_path, {"labels": "x, y"})})
    assert s.labels == ["x", "y"]


def test_numeric_conversion() -> None:
    s = load_settings(
        environ={"MM_ETCD_TIMEOUT_S": "1.5", "MM_LEASE_TTL_S": "7", "MM_LOAD_FAILURE_EXPIRY_TIME_MS": "1000"}
    )
    assert s.etcd_timeout_s == 1.5 and isinstance(s.etcd_timeout_s, float)
    assert s.lease_ttl_s == 7 and isinstance(s.lease_ttl_s, int)
    assert s.load_failure_expiry_ms == 1000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MM_LEASE_TTL_S": "abc"}, "MM_LEASE_TTL_S: 'abc' is not a number"),
        ({"MM_LEASE_TTL_S": "-3"}, "MM_LEASE_TTL_S: '-3' is not a positive number"),
        ({"MM_LEASE_TTL_S": "0"}, "MM_LEASE_TTL_S: '0' is not a positive number"),
        ({"MM_LEASE_TTL_S": "2.5"}, "MM_LEASE_TTL_S: '2.5' is not an integer"),
        ({"MM_LEASE_TTL_S": ""}, "MM_LEASE_TTL_S: '' is not a number"),
        (
            {"MM_TLS_CLIENT_AUTH": "maybe"},
            "MM_TLS_CLIENT_AUTH: 'maybe' is not one of none, optional, require",
        ),
        ({"MM_SVC_GRPC_PORT": "abc"}, "MM_SVC_GRPC_PORT: 'abc' is not a number"),
        ({"MM_SVC_GRPC_PORT": "80.5"}, "MM_SVC_GRPC_PORT: '80.5' is not an integer"),
        ({"MM_SVC_GRPC_PORT": "70000"}, "MM_SVC_GRPC_PORT: '70000' is not a port number (1-65535)"),
        ({"MM_SVC_GRPC_PORT": "0"}, "MM_SVC_GRPC_PORT: '0' is not a port number (1-65535)"),
        ({"MM_METRICS_PORT": "-1"}, "MM_METRICS_PORT: '-1' is not a port number (0-65535)"),
        ({"MM_ETCD_TIMEOUT_S": "soon"}, "MM_ETCD_TIMEOUT_S: 'soon' is not a number"),
        ({"MM_ETCD_TIMEOUT_S": "nan"}, "MM_ETCD_TIMEOUT_S: 'nan' is not a number"),
        ({"MM_MAX_HOPS": "0"}, "MM_MAX_HOPS: '0' is not a number between 1 and 16"),
        ({"MM_MAX_LOAD_FAILURES": "0"}, "MM_MAX_LOAD_FAILURES: '0' is not a number >= 1"),
        ({"MM_CAPACITY_BYTES": "-1"}, "MM_CAPACITY_BYTES: '-1' is not a non-negative number"),
        ({"MM_IDLE_UNLOAD_S": "-0.5"}, "MM_IDLE_UNLOAD_S: '-0.5' is not a non-negative number"),
        (
            {"MM_REPLACE_LOST_MODELS": "perhaps"},
            "MM_REPLACE_LOST_MODELS: 'perhaps' is not a boolean (true or false)",
        ),
        (
            {"MM_LOG_LEVEL": "loud"},
            "MM_LOG_LEVEL: 'loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
        (
            {"MM_TYPE_CONSTRAINTS": "{nope"},
            "MM_TYPE_CONSTRAINTS: '{nope' is not a JSON object of type constraints",
        ),
        (
            {"MM_KVSTORE_PREFIX": "/a b/"},
            "MM_KVSTORE_PREFIX: '/a b/' is not an etcd key prefix without spaces or control characters",
        ),
        (
            {"INTERNAL_GRPC_ADDRESS": "nohostport"},
            "INTERNAL_GRPC_ADDRESS: 'nohostport' is not a host:port or unix:path address",
        ),
        ({"SHUTDOWN_TIMEOUT_MS": "x"}, "SHUTDOWN_TIMEOUT_MS: 'x' is not a number"),
        ({"SHUTDOWN_TIMEOUT_MS": "-5"}, "SHUTDOWN_TIMEOUT_MS: '-5' is not a non-negative number"),
        ({"INTERNAL_GRPC_PORT": "x"}, "INTERNAL_GRPC_PORT: 'x' is not a port number (1-65535)"),
        ({"INTERNAL_GRPC_PORT": "0"}, "INTERNAL_GRPC_PORT: '0' is not a port number (1-65535)"),
        ({"INTERNAL_GRPC_SOCKET_PATH": " "}, "INTERNAL_GRPC_SOCKET_PATH: ' ' is not a unix socket path"),
    ],
)
def test_bad_value_message(env: dict, message: str) -> None:
    with pytest.raises(SettingError) as e:
        load_settings(environ=env)
    assert e.value.message == message
    assert isinstance(e.value, ValueError)


def test_bad_flag_and_config_values_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(SettingError) as e:
        load_settings(parse(["--max-hops", "many"]), environ={})
    assert e.value.message == "--max-hops: 'many' is not a number"
    path = config(tmp_path, {"port": 3.7})
    with pytest.raises(SettingError) as e:
        load_settings(environ={"MM_CONFIG_FILE": path})
    assert e.value.message == f"port (in {path}): '3.7' is not an integer"
    with pytest.raises(SettingError, match=r"labels \(in .*\): '5' is not a comma-separated list"):
        load_settings(environ={"MM_CONFIG_FILE": config(tmp_path, {"labels": 5})})


def test_overridden_bad_value_still_fails() -> None:
    """A typo in the environment is reported even when a flag sets the same setting."""
    with pytest.raises(SettingError, match="MM_SVC_GRPC_PORT: 'x'"):
        load_settings(parse(["--port", "1"]), environ={"MM_SVC_GRPC_PORT": "x"})


def test_every_numeric_setting_has_a_range() -> None:
    """Negative values are refused for every numeric setting (the default range is >= 0)."""
    for f in dataclasses.fields(MeshSettings):
        if f.type in ("int", "float"):
            env = spec_of(f).env
            with pytest.raises(SettingError, match=f"^{env}: '-1' is not "):
                load_settings(environ={env: "-1"})


def test_case_insensitive_choices() -> None:
    assert load_settings(environ={"MM_TLS_CLIENT_AUTH": "REQUIRE"}).tls_client_auth == "require"
    assert load_settings(environ={"MM_LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("env", "attr", "value"),
    [
        ({"INTERNAL_GRPC_PORT": "9085"}, "runtime_address", "127.0.0.1:9085"),
        (
            {"INTERNAL_GRPC_SOCKET_PATH": "/tmp/mmesh/grpc.sock"},
            "runtime_address",
            "unix:/tmp/mmesh/grpc.sock",
        ),
        ({"INTERNAL_SERVING_GRPC_PORT": "8001"}, "serving_address", "127.0.0.1:8001"),
        ({"INTERNAL_SERVING_GRPC_SOCKET_PATH": "/s.sock"}, "serving_address", "unix:/s.sock"),
        ({"SHUTDOWN_TIMEOUT_MS": "45000"}, "shutdown_timeout_s", 45.0),
        ({"SHUTDOWN_TIMEOUT_S": "45"}, "shutdown_timeout_s", 45.0),
        ({"MM_TLS_TRUST_CERT_PATH": "/ca.pem"}, "tls_ca", "/ca.pem"),
        ({"MM_DEFAULT_VMODEL_OWNER": "ksp"}, "default_vmodel_owner", "ksp"),
    ],
)
def test_modelmesh_aliases(env: dict, attr: str, value) -> None:
    assert getattr(load_settings(environ=env), attr) == value


def test_type_constraints_path_alias(tmp_path: Path) -> None:
    text = '{"sklearn": {"required": ["mt:sklearn"]}}'
    (tmp_path / "tc.json").write_text(text)
    assert (
        load_settings(environ={"MM_TYPE_CONSTRAINTS_PATH": str(tmp_path / "tc.json")}).type_constraints
        == text
    )
    with pytest.raises(SettingError) as e:
        load_settings(environ={"MM_TYPE_CONSTRAINTS_PATH": str(tmp_path / "none.json")})
    assert e.value.message == f"MM_TYPE_CONSTRAINTS_PATH: '{tmp_path / 'none.json'}' is not a readable file"
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(SettingError, match="is not a JSON object"):
        load_settings(environ={"MM_TYPE_CONSTRAINTS_PATH": str(tmp_path / "bad.json")})


@pytest.mark.parametrize(
    "env",
    [
        {"INTERNAL_GRPC_ADDRESS": "h:1", "INTERNAL_GRPC_PORT": "2"},
        {"INTERNAL_GRPC_PORT": "2", "INTERNAL_GRPC_SOCKET_PATH": "/s"},
        {"SHUTDOWN_TIMEOUT_S": "3", "SHUTDOWN_TIMEOUT_MS": "3000"},
        {"MM_TYPE_CONSTRAINTS": "{}", "MM_TYPE_CONSTRAINTS_PATH": "/x"},
        {"MM_TLS_CA_PATH": "/a", "MM_TLS_TRUST_CERT_PATH": "/a"},
        {"KV_STORE": "etcd:h:1", "MM_ETCD_ENDPOINTS": "h:1"},
    ],
)
def test_alias_and_native_name_conflict(env: dict) -> None:
    with pytest.raises(SettingError, match=r"are both set and name the same setting .*: set only one"):
        load_settings(environ=env)


def test_kv_store_simple_form() -> None:
    s = load_settings(
        environ={"KV_STORE": "etcd:http://e1:2379,e2:2379;rootPrefix=/prod", "MM_KVSTORE_PREFIX": "mm"}
    )
    assert s.etcd_endpoints == ["http://e1:2379", "e2:2379"]
    assert s.etcd_root_prefix == "/prod"
    assert s.key_root == "/prod/mm/"
    assert load_settings(environ={"KV_STORE": "etcd:e1:2379"}).key_root == "/mm/default/"


def test_kv_store_json_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    doc = {
        "endpoints": "https://e1:2379,https://e2:2379",
        "userid": "mesh",
        "password": "s3cret-pw",
        "root_prefix": "ns1",
        "certificate_file": "ca.pem",
        "override_authority": "etcd.local",
    }
    (tmp_path / "etcd_connection").write_text(json.dumps(doc))
    s = load_settings(environ={"KV_STORE": f"etcd:{tmp_path / 'etcd_connection'}"})
    assert s.etcd_endpoints == ["https://e1:2379", "https://e2:2379"]
    assert (s.etcd_username, s.etcd_password) == ("mesh", "s3cret-pw")
    assert s.etcd_ca == str(tmp_path / "ca.pem")  # relative to the JSON file's folder
    assert s.etcd_server_name == "etcd.local" and s.key_root == "/ns1/mm/default/"
    assert "s3cret-pw" not in repr(s)
    # the same file named by the flag and by the config file
    assert load_settings(parse(["--kv-store", f"etcd:{tmp_path / 'etcd_connection'}"]), environ={}) == s
    # a JSON setting named again in the same source
    with pytest.raises(SettingError, match="KV_STORE and MM_ETCD_USERNAME are both set"):
        load_settings(environ={"KV_STORE": f"etcd:{tmp_path / 'etcd_connection'}", "MM_ETCD_USERNAME": "x"})
    # ... but a higher source may override it
    assert (
        load_settings(
            parse(["--etcd-username", "other"]), environ={"KV_STORE": f"etcd:{tmp_path / 'etcd_connection'}"}
        ).etcd_username
        == "other"
    )


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (
            "zookeeper:zk:2181",
            "etcd:<JSON file> or etcd:<host:port,...>[;rootPrefix=<prefix>] (only etcd is supported)",
        ),
        ("etcd:", "etcd:<JSON file> or etcd:<host:port,...>[;rootPrefix=<prefix>]"),
        ("e1:2379", "etcd:<JSON file> or etcd:<host:port,...>[;rootPrefix=<prefix>]"),
        (
            "etcd:/no/such/file.json",
            "etcd:<JSON file> or etcd:<host:port,...>[;rootPrefix=<prefix>] (no such file, and not an endpoint list)",
        ),
    ],
)
def test_kv_store_bad_values(value: str, what: str) -> None:
    with pytest.raises(SettingError) as e:
        load_settings(environ={"KV_STORE": value})
    assert e.value.message == f"KV_STORE: '{value}' is not {what}"


@pytest.mark.parametrize(
    ("doc", "what"),
    [
        ({"userid": "x"}, "an etcd connection JSON file with an endpoints string"),
        (
            {"endpoints": "e:1", "username": "x"},
            "an etcd connection JSON file with known keys only (unknown: username)",
        ),
        (
            {"endpoints": "e:1", "certificate": "A", "certificate_file": "b"},
            "an etcd connection JSON file naming etcd_ca once (two keys set it)",
        ),
        ({"endpoints": 5}, "an etcd connection JSON file with an endpoints string"),
        ([1], "an etcd connection JSON file holding an object"),
    ],
)
def test_kv_store_bad_json(tmp_path: Path, doc, what: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SettingError) as e:
        load_settings(environ={"KV_STORE": f"etcd:{path}"})
    assert e.value.message == f"KV_STORE: 'etcd:{path}' is not {what}"


def test_kv_store_values_are_checked() -> None:
    with pytest.raises(SettingError) as e:
        load_settings(environ={"KV_STORE": "etcd:e1;rootPrefix=/p"})
    assert e.value.message == (
        "KV_STORE (etcd_endpoints): 'e1' is not a comma-separated list of etcd host:port endpoints"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MM_ETCD_USERNAME": "u"}, "MM_ETCD_USERNAME and MM_ETCD_PASSWORD must be set together"),
        ({"MM_ETCD_PASSWORD": "p"}, "MM_ETCD_USERNAME and MM_ETCD_PASSWORD must be set together"),
        (
            {"MM_ETCD_TOKEN": "t", "MM_ETCD_TOKEN_PATH": "/t"},
            "MM_ETCD_TOKEN and MM_ETCD_TOKEN_PATH are both set: set only one",
        ),
        (
            {"MM_ETCD_USERNAME": "u", "MM_ETCD_PASSWORD": "p", "MM_ETCD_TOKEN": "t"},
            "MM_ETCD_USERNAME and an etcd token are both set: use a password or a token",
        ),
        ({"MM_ETCD_CERT_PATH": "/c"}, "MM_ETCD_CERT_PATH and MM_ETCD_KEY_PATH must be set together"),
        (
            {"MM_TLS_KEY_CERT_PATH": "/c"},
            "MM_TLS_KEY_CERT_PATH and MM_TLS_PRIVATE_KEY_PATH must be set together",
        ),
        (
            {"MM_TLS_KEY_CERT_PATH": "/c", "MM_TLS_PRIVATE_KEY_PATH": "/k", "MM_TLS_CLIENT_AUTH": "require"},
            "MM_TLS_CLIENT_AUTH: 'require' needs MM_TLS_CA_PATH to verify client certificates",
        ),
    ],
)
def test_settings_that_go_together(env: dict, message: str) -> None:
    with pytest.raises(SettingError) as e:
        load_settings(environ=env)
    assert e.value.message == message


def test_secrets_never_shown() -> None:
    s = load_settings(environ={"MM_ETCD_USERNAME": "u", "MM_ETCD_PASSWORD": "hunter2-pw"})
    assert "hunter2-pw" not in repr(s) and "hunter2-pw" not in str(s)
    assert "tok-123456" not in repr(load_settings(environ={"MM_ETCD_TOKEN": "tok-123456"}))
    # a check that fails on a secret names the setting, never quotes the value
    with pytest.raises(SettingError) as e:
        load_settings(environ={"MM_ETCD_PASSWORD": "hunter2-pw"})
    assert "hunter2-pw" not in e.value.message


def test_unknown_config_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown settings .*bogus"):
        load_settings(environ={"MM_CONFIG_FILE": config(tmp_path, {"port": 1, "bogus": 2})})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.json"):
        load_settings(environ={"MM_CONFIG_FILE": str(tmp_path / "nope.json")})


def test_unrelated_environment_ignored() -> None:
    assert load_settings(environ={"PORT": "1", "MM_UNKNOWN": "x"}) == MeshSettings()


def test_derived_addresses() -> None:
    s = load_settings(environ={"INTERNAL_GRPC_ADDRESS": "unix:/tmp/rt.sock"})
    assert s.serving == "unix:/tmp/rt.sock"
    assert load_settings(environ={"INTERNAL_SERVING_GRPC_ADDRESS": "h:9"}).serving == "h:9"
    assert MeshSettings().advertised == "127.0.0.1:8033"
    assert MeshSettings(host="10.1.1.1", port=1).advertised == "10.1.1.1:1"
    assert MeshSettings(location="node", port=2).advertised == "node:2"
    assert MeshSettings(advertise_address="x:3", location="node").advertised == "x:3"


def test_every_field_documented_with_env_and_flag() -> None:
    rows = describe()
    names = [f.name for f in dataclasses.fields(MeshSettings)]
    assert [r[0] for r in rows] == names
    envs = [r[2] for r in rows if r[2]]
    assert len(envs) == len(set(envs)), "env names must be unique"
    flags = [r[1] for r in rows]
    assert len(flags) == len(set(flags)), "flags must be unique"
    for name, flag, env, doc in rows:
        assert flag.startswith("--") and "_" not in flag
        assert env, f"{name} has no env var"
        assert "Default: " in doc
    assert (
        flag_name(next(f for f in dataclasses.fields(MeshSettings) if f.name == "etcd_endpoints")) == "--etcd"
    )


def test_every_flag_round_trips() -> None:
    """Each flag reaches its own field (dest wiring in add_arguments)."""
    samples = {
        "int": ("123", 123),
        "float": ("1.25", 1.25),
        "bool": ("false", False),
        "list[str]": ("x:1,y:2", ["x:1", "y:2"]),
    }
    special = {
        "max_message_bytes": ("5000", 5000),
        "max_hops": ("3", 3),
        "peer_hop_fraction": ("0.5", 0.5),
        "tls_client_auth": ("NONE", "none"),
        "log_level": ("warning", "WARNING"),
        "type_constraints": ("{}", "{}"),
        "runtime_address": ("h:1", "h:1"),
        "serving_address": ("unix:/s", "unix:/s"),
        "kv_store": ("", ""),
    }
    for f in dataclasses.fields(MeshSettings):
        choices = spec_of(f).choices
        if f.name not in special and choices:  # a non-default choice, so the flag visibly lands
            pick = next(c for c in choices if c != f.default)
            raw, expected = pick, pick
        else:
            raw, expected = special.get(f.name) or samples.get(str(f.type), ("val", "val"))
        argv = [flag_name(f), raw]
        if f.name in ("tls_cert", "tls_key"):
            argv += ["--tls-key" if f.name == "tls_cert" else "--tls-cert", "x"]
        if f.name in ("etcd_cert", "etcd_key"):
            argv += ["--etcd-key" if f.name == "etcd_cert" else "--etcd-cert", "x"]
        if f.name in ("etcd_username", "etcd_password"):
            argv += ["--etcd-password" if f.name == "etcd_username" else "--etcd-username", "x"]
        s = load_settings(parse(argv), environ={})
        assert getattr(s, f.name) == expected, f.name


@pytest.mark.parametrize("data", [["port"], 5, None])
def test_config_file_must_be_an_object(tmp_path: Path, data) -> None:
    path = config(tmp_path, data)
    with pytest.raises(ValueError, match=r"mesh\.json"):
        load_settings(environ={"MM_CONFIG_FILE": path})


def test_serve_stops_at_start_with_the_message() -> None:
    """``mesh serve`` with a bad value prints exactly the message and exits 2, before touching etcd."""
    env = {**os.environ, "MM_LEASE_TTL_S": "abc", "MM_ETCD_ENDPOINTS": "127.0.0.1:1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mesh", "serve"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "MM_LEASE_TTL_S: 'abc' is not a number"


def test_secret_values_are_masked_in_log_lines(caplog) -> None:
    """The pod installs its secrets into the log redaction (mesh/redact.py), whoever logs them."""
    s = load_settings(environ={"MM_ETCD_USERNAME": "u", "MM_ETCD_PASSWORD": "hunter2-pw"})
    assert s.secret_values() == ["hunter2-pw"]
    handler = logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("test.secret")
    logger.addHandler(handler)
    try:
        install_log_redaction(logger, secrets=s.secret_values())
        logger.warning("a library printed %s", "hunter2-pw")
        assert handler.stream.getvalue() == "a library printed ***\n"
    finally:
        logger.removeHandler(handler)
