"""mesh.settings: precedence defaults < config file < env < flags, conversion, errors, describe()."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from mesh.settings import MeshSettings, add_arguments, describe, flag_name, load_settings


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
        ("", []),
        (",", []),
    ],
)
def test_list_parsing(raw: str, expected: list[str]) -> None:
    assert load_settings(environ={"MM_ETCD_ENDPOINTS": raw}).etcd_endpoints == expected
    assert load_settings(parse(["--etcd", raw]), environ={}).etcd_endpoints == expected
    assert load_settings(environ={"MM_LABELS": raw}).labels == expected


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
    ("env", "setting"),
    [
        ({"MM_SVC_GRPC_PORT": "abc"}, "port"),
        ({"MM_SVC_GRPC_PORT": "80.5"}, "port"),
        ({"MM_LEASE_TTL_S": ""}, "lease_ttl_s"),
        ({"MM_ETCD_TIMEOUT_S": "soon"}, "etcd_timeout_s"),
    ],
)
def test_invalid_value_names_the_setting(env: dict, setting: str) -> None:
    with pytest.raises(ValueError, match=f"setting {setting}"):
        load_settings(environ=env)


def test_invalid_flag_value_names_the_setting() -> None:
    with pytest.raises(ValueError, match="max_hops"):
        load_settings(parse(["--max-hops", "many"]), environ={})


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
    for f in dataclasses.fields(MeshSettings):
        raw, expected = samples.get(str(f.type), ("val", "val"))
        s = load_settings(parse([flag_name(f), raw]), environ={})
        assert getattr(s, f.name) == expected, f.name


@pytest.mark.parametrize("data", [["port"], 5, None])
def test_config_file_must_be_an_object(tmp_path: Path, data) -> None:
    path = config(tmp_path, data)
    with pytest.raises(ValueError, match=r"mesh\.json"):
        load_settings(environ={"MM_CONFIG_FILE": path})


def test_config_file_float_for_int_setting_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="setting port"):
        load_settings(environ={"MM_CONFIG_FILE": config(tmp_path, {"port": 3.7})})
