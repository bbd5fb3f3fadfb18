"""docs/configuration.md stays what scripts/gen_config_docs.py generates from the settings code, and every
setting of the pod, the runtime and the puller is in it with its env var, aliases and flag."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from mesh.settings import MeshSettings
from mesh.settingspec import describe_fields
from puller.settings import PullerSettings
from runtime_adapters.builtin.__main__ import parse_args as builtin_args
from runtime_adapters.repository_main import add_common_args
from runtime_adapters.settings import RuntimeSettings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"
DOC = ROOT / "docs" / "configuration.md"
CLASSES = (MeshSettings, RuntimeSettings, PullerSettings)


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_up_to_date(gen) -> None:
    assert DOC.read_text() == gen.render(), (
        "docs/configuration.md is out of date: run `.venv/bin/python scripts/gen_config_docs.py`"
    )


@pytest.mark.parametrize("cls", CLASSES)
def test_every_setting_documented_with_env_and_flag(gen, cls) -> None:
    text = gen.render()
    rows = describe_fields(cls)
    assert rows
    for row in rows:
        assert row["env"], f"{row['name']} has no env var"
        assert row["flag"].startswith("--") and "_" not in row["flag"]
        assert row["doc"].strip(), f"{row['name']} has no doc"
        assert f"| `{row['name']}` | `{row['flag']}` | `{row['env']}`" in text
        for alias, _note in row["aliases"]:
            assert f"`{alias}`" in text
    envs = [r["env"] for r in rows] + [a for r in rows for a, _ in r["aliases"]]
    assert len(envs) == len(set(envs)), "env names and aliases must be unique"
    flags = [r["flag"] for r in rows]
    assert len(flags) == len(set(flags))


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def test_documented_runtime_flags_exist() -> None:
    """The runtime processes take exactly the flags the docs list (plus their own)."""
    documented = {r["flag"] for r in describe_fields(RuntimeSettings)}
    builtin = builtin_args([])
    assert {f.name for f in RuntimeSettings.__dataclass_fields__.values()} <= set(vars(builtin)) | {"extra"}
    p = argparse.ArgumentParser()
    add_common_args(p)
    assert documented - {"--predict-threads"} <= _flags(p)
    # the puller's settings are flags of every runtime process too
    puller = {r["flag"] for r in describe_fields(PullerSettings)}
    assert puller <= _flags(p)
    assert {f.name for f in PullerSettings.__dataclass_fields__.values()} - {"extra"} <= set(vars(builtin))


def test_table_rows_are_well_formed(gen) -> None:
    for line in gen.render().splitlines():
        if line.startswith("| `") and not line.startswith("| `KV_STORE`"):
            cells = line.replace("\\|", "").split("|")
            assert len(cells) in (5, 8), line  # 3 (aliases) or 6 columns between the outer pipes


def test_check_mode(gen, tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    assert gen.main(["--check", "--output", str(out)]) == 1  # missing
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("MM_SVC_GRPC_PORT", "MM_PORT"))
    assert gen.main(["--check", "--output", str(out)]) == 1
