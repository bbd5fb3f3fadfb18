"""CLI pieces that need no server: argument parsing, byte sizes, the status tables, error output."""

from __future__ import annotations

import io

import pytest

from mesh.cli import build_parser, format_cluster_status, human_age, human_bytes, main, parse_bytes
from mesh.progress import ModelProgress, ProgressPrinter, wait_deadline_s, wait_for_models


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


def test_status_table_has_a_size_column_and_counts():
    st = {
        "responding_instance": "pod-0",
        "total_models": 7,
        "instances": [],
        "models": [
            {
                "model_id": "big",
                "type": "onnx",
                "status": "LOADED",
                "size_bytes": 3 * 1024**2,
                "loaded_on": ["pod-1"],
                "loading_on": [],
                "failed_on": [],
                "last_used_ms": 0,
                "errors": [],
            }
        ],
    }
    text = format_cluster_status(st, now_ms=1)
    header = [line for line in text.splitlines() if line.startswith("ID  ")][-1]  # the models table
    assert "SIZE" in header and "3.0MiB" in text and "models (1 of 7):" in text


def test_status_filters_parse():
    args = build_parser().parse_args(
        ["status", "iris-*", "--type", "sklearn", "--status", "loaded", "--pod", "pod-1", "--watch"]
    )
    assert (args.model_id, args.model_type, args.model_status, args.pod, args.watch) == (
        "iris-*",
        "sklearn",
        "LOADED",
        "pod-1",
        2.0,
    )
    assert build_parser().parse_args(["--address", "a:1,b:2", "status"]).address == "a:1,b:2"
    assert build_parser().parse_args(["ensure-loaded", "m", "--sync", "--wait", "600"]).wait == 600.0


def test_wait_follows_the_load_timeout():
    assert wait_deadline_s(300_000) == 330.0  # 5 min load timeout + margin, not a fixed 30 s
    assert wait_deadline_s(0) == 120.0  # a pod that does not say: the runtime default + margin
    assert wait_deadline_s(300_000, 12.0) == 12.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def statuses(*seq):
    it = iter(seq)
    last = {}

    def status_of(model_id):
        nonlocal last
        last = next(it, last)
        return last

    return status_of


def test_wait_shows_progress_until_loaded():
    clock = FakeClock()
    loading = {"status": "LOADING", "errors": [], "copies": [{"location": "pod-1", "status": "LOADING"}]}
    loaded = {"status": "LOADED", "errors": [], "copies": [{"location": "pod-1", "status": "LOADED"}]}
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False)
    progress, done = wait_for_models(
        statuses(loading, loading, loaded),
        ["m1"],
        timeout_s=100,
        on_update=printer,
        sizes=lambda ids: {i: 2048 for i in ids},
        clock=clock,
        sleep=clock.sleep,
    )
    assert done and progress[0].status == "LOADED" and progress[0].size_bytes == 2048
    lines = out.getvalue().splitlines()
    assert lines[0] == "m1: LOADING after 0.0s (pod-1 loading)"
    assert lines[-1].startswith("m1: LOADED after ") and lines[-1].endswith("(pod-1 loaded, 2.0KiB)")
    assert len(lines) == 2  # one line per change, none for the repeated LOADING


def test_wait_gives_up_at_the_deadline_and_reports_failures():
    clock = FakeClock()
    loading = {"status": "LOADING", "errors": [], "copies": []}
    progress, done = wait_for_models(statuses(loading), ["m1"], timeout_s=5, clock=clock, sleep=clock.sleep)
    assert not done and progress[0].status == "LOADING" and clock.t >= 5
    failed = {"status": "LOADING_FAILED", "errors": ["boom"], "copies": []}
    progress, done = wait_for_models(statuses(failed), ["m1"], timeout_s=5, clock=clock, sleep=clock.sleep)
    assert done and progress[0].errors == ["boom"]


def test_tty_progress_rewrites_one_line():
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True)
    m = ModelProgress("m1", status="LOADING")
    printer([m], 1.0)
    m.status = "LOADED"
    printer([m], 2.0)
    printer.finish()
    assert out.getvalue().count("\r") == 2 and out.getvalue().endswith("\n")
