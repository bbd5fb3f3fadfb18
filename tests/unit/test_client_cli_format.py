"""CLI pieces that need no server: argument parsing, byte sizes, the status tables, error output."""

from __future__ import annotations

import pytest

from mesh.cli import build_parser, format_cluster_status, human_age, human_bytes, main, parse_bytes


def test_parse_bytes_suffixes():
    assert parse_bytes("1024") == 1024
    assert parse_bytes("512Mi") == 512 * 1024**2
    assert parse_bytes("2G") == 2 * 1000**3
    assert parse_bytes("1.5KiB") == 1536


def test_human_sizes_and_ages():
    assert human_bytes(512) == "512B"
    assert human_bytes(3 * 1024**2) == "3.0MiB"
    assert human_age(0) == "-"
    assert human_age(61_000) == "1m01s"


def test_address_before_or_after_subcommand():
    p = build_parser()
    assert p.parse_args(["--address", "h:1", "status"]).address == "h:1"
    assert p.parse_args(["status", "--address", "h:2"]).address == "h:2"
    args = p.parse_args(["register", "m1", "--type", "sklearn", "--path", "iris", "--load-now"])
    assert (args.model_id, args.model_type, args.path, args.load_now, args.sync) == (
        "m1",
        "sklearn",
        "iris",
        True,
        False,
    )


def test_up_defaults():
    args = build_parser().parse_args(["up", "--pods", "2", "--capacity", "64Mi"])
    assert (args.pods, args.port, args.capacity, args.etcd) == (2, 8033, 64 * 1024**2, None)


def test_vmodel_set_parses():
    args = build_parser().parse_args(["vmodel", "set", "v1", "--target", "m2", "--owner", "me"])
    assert (args.command, args.vcommand, args.vmodel_id, args.target, args.owner) == (
        "vmodel",
        "set",
        "v1",
        "m2",
        "me",
    )


def test_status_table_lists_pods_and_models():
    st = {
        "responding_instance": "pod-0",
        "instances": [
            {
                "instance_id": "pod-0",
                "address": "127.0.0.1:8033",
                "zone": "",
                "labels": [],
                "capacity_bytes": 64 * 1024**2,
                "used_bytes": 1024**2,
                "lru_age_ms": 5000,
                "model_count": 1,
                "loads_in_progress": 0,
                "rpm": 3,
                "shutting_down": False,
                "leader": True,
            }
        ],
        "models": [
            {
                "model_id": "iris",
                "type": "sklearn",
                "status": "LOADED",
                "loaded_on": ["pod-0"],
                "loading_on": [],
                "failed_on": [],
                "last_used_ms": 1_000,
                "errors": [],
            }
        ],
    }
    text = format_cluster_status(st, now_ms=11_000)
    assert "pod-0" in text and "127.0.0.1:8033" in text and "leader" in text
    assert "iris" in text and "LOADED" in text and "10s" in text


def test_unreachable_pod_prints_error_code(capsys):
    # Port 1 on loopback refuses connections: the error path, not a timing assertion.
    rc = main(["--address", "127.0.0.1:1", "--timeout", "5", "status", "m"])
    assert rc == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_bad_json_data_is_reported(capsys):
    rc = main(["--address", "127.0.0.1:1", "infer", "m", "--data", "[1,"])
    assert rc == 1
    assert capsys.readouterr().err.startswith("error: INVALID_ARGUMENT: ")


def test_missing_required_flag_is_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["register", "m"])
    assert e.value.code == 2
