"""Builds the mesh image with deploy/build-images.sh and runs it, where a container engine works here.

Skipped, with the precise reason, when no engine can build (no docker daemon, no buildah/podman) or when
no Python 3.11 base image is available (this machine reaches no image registry; deploy/build-images.sh
--local-base makes an equivalent base from Debian packages). The image is run with podman and runc when
they can start a container here, else with `buildah run --isolation chroot` (the image's filesystem, user
and environment, without namespaces: what this machine allows)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.deploy.kube import REPO

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

BASES = ("python:3.11-slim-bookworm", "localhost/debian-python:3.11-bookworm")
IMAGE = "localhost/modelmesh-py/mesh:test"
VFS = ("--storage-driver", "vfs")


def sh(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def engine() -> tuple[str | None, str]:
    """(engine, why not) — docker with a daemon, else buildah with vfs storage."""
    tried = []
    if shutil.which("docker"):
        if sh("docker", "info").returncode == 0:
            return "docker", ""
        tried.append("docker: client installed but no daemon answers")
    else:
        tried.append("docker: not installed")
    if shutil.which("buildah"):
        proc = sh("buildah", *VFS, "images")
        if proc.returncode == 0:
            return "buildah", ""
        tried.append(f"buildah: {proc.stderr.strip()[:200]}")
    else:
        tried.append("buildah: not installed (apt-get install buildah)")
    return None, "; ".join(tried)


def base_image(kind: str) -> str | None:
    for base in BASES:
        cmd = (
            ("docker", "image", "inspect", base)
            if kind == "docker"
            else ("buildah", *VFS, "inspect", "--type", "image", base)
        )
        if sh(*cmd).returncode == 0:
            return base
    return None


@pytest.fixture(scope="module")
def built_image():
    kind, why = engine()
    if kind is None:
        pytest.skip(f"no container engine can build here: {why}")
    base = base_image(kind)
    if base is None:
        pytest.skip(f"no Python 3.11 base image ({' or '.join(BASES)}); none can be pulled here; "
                    "deploy/build-images.sh --local-base builds the second from Debian packages")  # fmt: skip
    proc = subprocess.run(
        [str(REPO / "deploy" / "build-images.sh"), "--engine", kind, "--tag", "test", "mesh"],
        env={**os.environ, "PYTHON_IMAGE": base},
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return kind, IMAGE if kind != "docker" else "modelmesh-py/mesh:test"


def run_in_image(kind: str, image: str, *argv: str) -> subprocess.CompletedProcess:
    if kind == "docker":
        return sh("docker", "run", "--rm", "--network", "none", "--entrypoint", argv[0], image, *argv[1:])
    if shutil.which("podman") and shutil.which("runc"):
        proc = sh("podman", *VFS, "--runtime", "runc", "run", "--rm", "--network", "none",
                  "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                  "--entrypoint", argv[0], image, *argv[1:])  # fmt: skip
        if "OCI permission denied" not in proc.stderr and "OCI runtime" not in proc.stderr:
            return proc
    ctr = sh("buildah", *VFS, "from", image).stdout.strip()
    try:
        return sh("buildah", *VFS, "run", "--isolation", "chroot", ctr, "--", *argv)
    finally:
        sh("buildah", *VFS, "rm", ctr)


def test_mesh_image_runs_mesh_help_as_non_root_without_compilers(built_image) -> None:
    kind, image = built_image
    help_ = run_in_image(kind, image, "mesh", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "usage: mesh" in help_.stdout and "apply" in help_.stdout and "serve" in help_.stdout
    serve = run_in_image(kind, image, "mesh", "serve", "--help")
    assert serve.returncode == 0 and "--etcd" in serve.stdout and "MM_ETCD_UNHEALTHY_GRACE_S" in serve.stdout
    uid = run_in_image(kind, image, "id", "-u")
    assert uid.stdout.strip() == "1000", uid.stdout + uid.stderr
    tools = run_in_image(kind, image, "sh", "-c", "command -v gcc cc make g++ || echo none")
    assert tools.stdout.strip() == "none", tools.stdout
    probe = run_in_image(
        kind,
        image,
        "python",
        "-m",
        "mesh.health",
        "wait-stopped",
        "--address",
        "127.0.0.1:9",
        "--timeout",
        "1",
    )
    assert probe.returncode == 0 and "stopped" in probe.stdout, probe.stdout + probe.stderr
