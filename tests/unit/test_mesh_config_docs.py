"""docs/configuration.md stays what scripts/gen_config_docs.py generates from the settings code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mesh.settings import describe
from runtime_adapters.settings import _ENV as RUNTIME_ENV

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"
DOC = ROOT / "docs" / "configuration.md"


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


def test_every_setting_documented(gen) -> None:
    text = gen.render()
    for name, flag, env, _doc in describe():
        assert f"| `{name}` | `{flag}` | `{env}` |" in text
    for _field, (env, _conv) in RUNTIME_ENV.items():
        assert f"| `{env}` |" in text
    assert "MM_CONFIG_FILE" in text and "CONTAINER_MEM_REQ_BYTES" in text


def test_table_rows_are_well_formed(gen) -> None:
    for line in gen.render().splitlines():
        if line.startswith("| `"):
            cells = line.replace("\\|", "").split("|")
            assert len(cells) == 6, line  # 4 columns between the outer pipes


def test_check_mode(gen, tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    assert gen.main(["--check", "--output", str(out)]) == 1  # missing
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("MM_SVC_GRPC_PORT", "MM_PORT"))
    assert gen.main(["--check", "--output", str(out)]) == 1
