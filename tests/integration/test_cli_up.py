"""``mesh up`` as a real subprocess: it starts etcd and pods, and SIGTERM leaves no process behind.

Descendants are collected with psutil while the cluster runs (etcd, pods, their runtimes) and must all be
gone after ``mesh up`` exits; the start-failure path must clean up the same way.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading

import psutil
import pytest

from mesh.devtools.cluster import REPO_ROOT, pick_base_port

pytestmark = pytest.mark.timeout(300)  # hang guard only


def _spawn_up(tmp_path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "mesh", "up", "--data-dir", str(tmp_path / "data"), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=str(REPO_ROOT),
    )


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _read_until(proc: subprocess.Popen, marker: str, lines: list[str]) -> bool:
    """Read stdout lines until ``marker`` appears (True) or the process ends (False)."""
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return True
    return False


def _drain(proc: subprocess.Popen, lines: list[str]) -> threading.Thread:
    t = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    t.start()
    return t


@pytest.mark.skipif(importlib.util.find_spec("mesh.pod") is None, reason="mesh.pod not written yet")
def test_up_then_sigterm_leaves_no_process(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    port = pick_base_port(0, 2)
    proc = _spawn_up(
        tmp_path, "--pods", "2", "--port", str(port), "--models-dir", str(models), "--capacity", "64Mi"
    )
    lines: list[str] = []
    try:
        assert _read_until(proc, "ready; Ctrl-C to stop", lines), "".join(lines)
        out = "".join(lines)
        assert f"127.0.0.1:{port}" in out and f"127.0.0.1:{port + 1}" in out
        # each part reported as it starts, then every address of each pod
        assert "etcd: up on 127.0.0.1:" in out
        for i in (0, 1):
            assert (
                f"pod-{i}: started (pid " in out and f"pod-{i}: SERVING on 127.0.0.1:{port + i} after " in out
            )
        assert out.count("  grpc     127.0.0.1:") == 2 and out.count("  metrics  http://127.0.0.1:") == 2
        assert out.count("  runtime  127.0.0.1:") == 2 and out.count("  rest     ") == 2
        assert f"clients: --address 127.0.0.1:{port},127.0.0.1:{port + 1}" in out
        descendants = psutil.Process(proc.pid).children(recursive=True)
        argvs = [p.cmdline() for p in descendants]
        assert any(a[0].endswith("etcd") for a in argvs), argvs
        assert sum(a[1:4] == ["-m", "mesh", "serve"] for a in argvs) == 2, argvs
        assert sum(a[1:3] == ["-m", "runtime_adapters.builtin"] for a in argvs) == 2, argvs
        drain = _drain(proc, lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, "".join(lines)
        drain.join(timeout=10)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert _alive(alive) == [], [" ".join(p.cmdline()) for p in _alive(alive)]
    finally:
        if proc.poll() is None:  # a failed assertion above: let mesh up clean up, then insist
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_up_start_failure_cleans_up(tmp_path):
    """A pod that cannot start (here: the port is taken) fails ``mesh up`` with an error and no leftovers."""
    port = pick_base_port(0, 1)

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        proc = _spawn_up(tmp_path, "--port", str(port), "--models-dir", str(tmp_path))
        seen: list[psutil.Process] = []
        lines: list[str] = []
        drain = _drain(proc, lines)
        while proc.poll() is None:
            try:
                seen.extend(p for p in psutil.Process(proc.pid).children(recursive=True) if p not in seen)
            except psutil.NoSuchProcess:
                break
            drain.join(timeout=0.05)
        rc = proc.wait(timeout=60)
        drain.join(timeout=10)
    assert rc == 1
    assert "error: UNAVAILABLE: port" in "".join(lines)
    psutil.wait_procs(seen, timeout=10)
    assert _alive(seen) == []


def test_stop_kills_a_stubborn_pod_and_its_detached_child(tmp_path):
    """A 'pod' that ignores SIGTERM and has a child in its own session (as runtimes are started) is still
    cleaned up by LocalCluster.stop(): SIGKILL by PID, by recorded descendant and by process group."""
    from mesh.devtools.cluster import ClusterStartError, LocalCluster

    fake_python = tmp_path / "fake-python"
    fake_python.write_text("#!/bin/sh\nsetsid sleep 300 &\ntrap '' TERM\nwhile true; do sleep 1; done\n")
    fake_python.chmod(0o755)
    cluster = LocalCluster(
        pods=1,
        base_port=pick_base_port(0, 1),
        models_dir=tmp_path,
        etcd="127.0.0.1:1",  # never contacted: the fake pod does not talk to etcd
        data_dir=tmp_path / "data",
        python=str(fake_python),
        startup_timeout=2,
        stop_timeout=1,
    )
    seen: list[psutil.Process] = []
    real_wait_ready = cluster.wait_ready

    def wait_ready_and_record():
        try:
            real_wait_ready()
        finally:
            for pod in cluster.pods:
                seen.append(psutil.Process(pod.pid))
                seen.extend(pod.descendants.values())

    cluster.wait_ready = wait_ready_and_record
    with pytest.raises(ClusterStartError):
        cluster.start()
    assert len(seen) >= 2
    psutil.wait_procs(seen, timeout=10)
    assert _alive(seen) == []
