"""The import boundaries of the code base, checked from the source (no import needed).

Each rule is a boundary that docs/architecture.md draws; a forbidden import makes this test fail and names the
module and line. Imports under ``if TYPE_CHECKING:`` are type hints only and do not count.

1. The data plane never reaches etcd or the control plane: ``mesh.dataplane`` imports no ``mesh.kv`` and no
   ``mesh.cluster`` module, and not the loader (it depends on ``mesh.dataplane.ports.ColdPath``).
2. Pure policy does no I/O: placement, cache, reservations, vModel plans, status and the frozen map import
   nothing that can block or talk (asyncio, grpc, sockets, files, processes, clocks, etcd).
3. Only ``mesh/kv/client.py`` imports the etcd client library.
4. ``mesh`` never imports ``puller`` or ``runtime_adapters`` (they meet over the ``mmesh.ModelRuntime`` SPI),
   and those two import only the mesh's leaf modules.
5. Only ``mesh/errors.py`` maps between exceptions and gRPC status codes.
6. Only ``mesh/kv/keys.py`` spells key families.
7. Only ``mesh/clock.py`` reads the clocks (tools outside the pod process are exempt).
8. Only ``mesh/settings.py`` reads the environment in the pod.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MESH = ROOT / "mesh"
# User-side tools: not part of a pod process.
TOOLS = {"mesh/cli.py", "mesh/client.py", "mesh/aio_client.py", "mesh/progress.py", "mesh/__main__.py"}


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _in_pod(path: Path) -> bool:
    rel = _rel(path)
    return rel not in TOOLS and not rel.startswith("mesh/devtools/")


def _runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import that runs (``if TYPE_CHECKING:`` blocks skipped)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _violations(paths: list[Path], forbidden) -> list[str]:
    out = []
    for path in paths:
        for line, module in _runtime_imports(path):
            if forbidden(module):
                out.append(f"{_rel(path)}:{line} imports {module}")
    return sorted(set(out))


def _starts(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_dataplane_never_imports_kv_cluster_or_the_loader() -> None:
    bad = _violations(
        _modules("mesh/dataplane"), lambda m: _starts(m, "mesh.kv", "mesh.cluster", "mesh.local.loader")
    )
    assert bad == []


PURE = [
    "mesh/cluster/placement.py",
    "mesh/cluster/reservations.py",
    "mesh/cluster/vmodel_plans.py",
    "mesh/cluster/status.py",
    "mesh/local/cache.py",
    "mesh/frozenmap.py",
]
IO_MODULES = (
    "asyncio",
    "grpc",
    "socket",
    "subprocess",
    "os",
    "pathlib",
    "time",
    "protos.etcd",
    "threading",
    "urllib",
    "requests",
    "mesh.kv.client",
    "mesh.kv.table",
    "mesh.clock",
)


@pytest.mark.parametrize("module", PURE)
def test_pure_policy_does_no_io(module: str) -> None:
    assert _violations([ROOT / module], lambda m: _starts(m, *IO_MODULES)) == []


def test_only_the_kv_client_imports_the_etcd_library() -> None:
    paths = [p for p in _modules("mesh") if _rel(p) != "mesh/kv/client.py"]
    assert _violations(paths, lambda m: _starts(m, "aetcd", "etcd3", "pyetcd", "protos.etcd")) == []


def test_mesh_never_imports_puller_or_runtime_adapters() -> None:
    assert _violations(_modules("mesh"), lambda m: _starts(m, "puller", "runtime_adapters")) == []


#: What the storage and runtime sides may use of the mesh: its leaf modules, nothing with pod state.
MESH_LEAVES = (
    "mesh.errors",
    "mesh.ids",
    "mesh.clock",
    "mesh.process",
    "mesh.boundary",
    "mesh.channels",
    "mesh.redact",
    "mesh.tracing",
    "mesh.logs",
    "mesh.settingspec",
    "mesh.v2types",
)


@pytest.mark.parametrize("package", ["puller", "runtime_adapters"])
def test_storage_and_runtimes_use_only_mesh_leaf_modules(package: str) -> None:
    bad = _violations(_modules(package), lambda m: _starts(m, "mesh") and not _starts(m, *MESH_LEAVES))
    assert bad == []


def _lines_matching(paths: list[Path], pattern: str) -> list[str]:
    rx = re.compile(pattern)
    out = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if rx.search(code):
                out.append(f"{_rel(path)}:{n}: {line.strip()}")
    return out


def test_only_errors_maps_status_codes() -> None:
    """Status codes are named in mesh/errors.py alone (plus the user-side client, which reads them)."""
    paths = [p for p in _modules("mesh") if _in_pod(p) and _rel(p) != "mesh/errors.py"]
    assert _lines_matching(paths, r"StatusCode\.") == []


def test_only_keys_spells_key_families() -> None:
    paths = [p for p in _modules("mesh") if _in_pod(p) and _rel(p) != "mesh/kv/keys.py"]
    assert (
        _lines_matching(
            paths, r"""["'](registry|instances|vmodels|config)/["']|\+\s*["']leader["']|["']leader["']\s*\+"""
        )
        == []
    )


def test_only_the_clock_module_reads_the_clocks() -> None:
    paths = [p for p in _modules("mesh") if _in_pod(p) and _rel(p) != "mesh/clock.py"]
    clocks = r"\btime\.(time|monotonic|perf_counter|time_ns|monotonic_ns)\(|\bloop\.time\(\)|\.time\(\)"
    assert _lines_matching(paths, clocks) == []


def test_only_settings_reads_the_environment() -> None:
    allowed = {"mesh/settings.py", "mesh/pod.py"}  # pod.py: GRPC_ENABLE_FORK_SUPPORT before grpc loads
    paths = [p for p in _modules("mesh") if _in_pod(p) and _rel(p) not in allowed]
    assert _lines_matching(paths, r"os\.environ|os\.getenv") == []
