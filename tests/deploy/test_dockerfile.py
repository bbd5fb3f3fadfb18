"""deploy/Dockerfile read statically: the three targets exist; each installs what pyproject.toml declares
(constrained by requirements.lock) into a venv built in a build stage; the final stages start again from
the slim Python image, copy only virtualenvs, install no compiler, run as a numeric non-root user, and
expose the ports the settings default to; ENTRYPOINT modules exist; the build context filter keeps what the
COPY lines need. (test_container_image.py builds and runs the images where an engine works.)"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import tomllib

import pytest

from mesh.settings import MeshSettings
from runtime_adapters.settings import RuntimeSettings
from tests.deploy.kube import DOCKERFILE, REPO, dockerfile_stages

STAGES = dockerfile_stages()
FINAL = {"mesh": ".", "runtime-builtin": ".[runtime]", "runtime-mlserver": "."}
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|cmake|build-essential|[\w.+-]+-dev|rustc|cargo)\b")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(stage: str, keyword: str) -> list[str]:
    return [rest for k, rest in STAGES[stage] if k == keyword]


def parent(stage: str) -> str:
    return STAGES[stage][0][1].split()[0]


def chain(stage: str) -> list[str]:
    """``stage`` and the stages it is built FROM, down to the external base image."""
    out = [stage]
    while parent(out[-1]) in STAGES:
        out.append(parent(out[-1]))
    return out


def copied_from(stage: str) -> list[tuple[str, str]]:
    """(source stage, source path) of every ``COPY --from`` in ``stage``."""
    out = []
    for rest in instructions(stage, "COPY"):
        m = re.match(r"--from=(\S+)\s+(\S+)\s+\S+", rest)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def test_targets_exist_and_base_is_slim_python_311() -> None:
    assert set(FINAL) <= set(STAGES)
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert arg and re.fullmatch(r"python:3\.11-slim(-\w+)?", arg.group(1)), arg
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    for target in FINAL:
        assert chain(target)[-1] == "final" and parent("final") == "${PYTHON_IMAGE}", chain(target)


@pytest.mark.parametrize("target", FINAL)
def test_final_stages_hold_no_build_tools(target: str) -> None:
    for stage in chain(target):
        assert not stage.startswith(("build", "source")), f"{target} is built FROM a build stage ({stage})"
        for run in instructions(stage, "RUN"):
            assert not COMPILERS.search(run), f"{stage}: {run}"
        for source, path in copied_from(stage):
            assert path.startswith("/opt/"), f"{stage} copies {path} from {source}: only virtualenvs"


@pytest.mark.parametrize("target", FINAL)
def test_runs_as_a_numeric_non_root_user(target: str) -> None:
    users = [u for s in reversed(chain(target)) for u in instructions(s, "USER")]
    assert users, f"{target} sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit()), users[-1]
    created = " ".join(instructions("final", "RUN"))
    assert f"--uid {uid}" in created


def test_exposes_the_ports_the_settings_default_to() -> None:
    def exposed(target: str) -> set[int]:
        return {int(p) for rest in instructions(target, "EXPOSE") for p in rest.split()}

    mesh = MeshSettings()
    assert exposed("mesh") == {mesh.port, mesh.metrics_port} == {8033, 2112}
    assert exposed("runtime-builtin") == exposed("runtime-mlserver") == {RuntimeSettings().port} == {8085}


@pytest.mark.parametrize("target", FINAL)
def test_installs_what_pyproject_declares(target: str) -> None:
    venvs = {src: path for src, path in copied_from(target)}
    builder = next(src for src, path in copied_from(target) if path == "/opt/mesh")
    installs = [r for s in chain(builder) for r in instructions(s, "RUN") if "pip install" in r]
    spec = FINAL[target]
    project_installs = [
        r
        for r in installs
        if re.search(rf"pip install [^&]*-c requirements\.lock \"?{re.escape(spec)}\"?(\s|$)", r)
    ]
    assert project_installs, f"{builder} does not `pip install -c requirements.lock {spec}`: {installs}"
    extras = re.findall(r"\[(\w+)\]", spec)
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
    if target == "runtime-mlserver":
        assert venvs.get("build-mlserver") in ("/opt/mesh", "/opt/mlserver")
        runs = " ".join(instructions("build-mlserver", "RUN"))
        assert "scripts/mlserver_venv.sh /opt/mlserver" in runs  # the one place MLServer's pins live


def test_source_stage_copies_every_package_pyproject_ships() -> None:
    includes = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in includes}
    copied = {src for rest in instructions("source", "COPY") for src in rest.split()[:-1]}
    assert packages <= copied, packages - copied
    assert {"pyproject.toml", "requirements.lock", "README.md"} <= copied


@pytest.mark.parametrize("target", FINAL)
def test_entrypoints_exist(target: str) -> None:
    import json

    entry = json.loads(instructions(target, "ENTRYPOINT")[-1])
    if entry[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(entry[2]) is not None
    else:
        assert entry == ["mesh"] and PYPROJECT["project"]["scripts"]["mesh"] == "mesh.cli:main"


def test_build_context_filter_keeps_what_copy_needs() -> None:
    rules = [
        line.strip()
        for line in (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*") or pattern == "**":
                keep = negate
        return keep

    sources = {src for rest in instructions("source", "COPY") for src in rest.split()[:-1]}
    for src in sources:
        assert included(src), f"{src} is filtered out of the build context"
    assert not included(".venv") and not included("mesh/__pycache__")


def test_the_compiler_check_would_catch_one() -> None:
    stages = dockerfile_stages(
        "FROM python:3.11-slim AS final\nRUN apt-get install -y \\\n  gcc python3-dev\n"
    )
    run = next(rest for k, rest in stages["final"] if k == "RUN")
    assert COMPILERS.findall(run) == ["gcc", "python3-dev"]
    assert not COMPILERS.search(
        "apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*"
    )
