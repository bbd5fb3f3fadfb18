"""Pure parts of the MLServer/Triton adapters: model-settings.json content, Triton repository layouts,
config.pbtxt name stripping, type names, V2 index state spellings and the process-tree meter."""

from __future__ import annotations

import json
import os

import pytest

from runtime_adapters.errors import UnsupportedModelType
from runtime_adapters.mlserver.adapter import MLServerAdapter, model_settings
from runtime_adapters.repository_adapter import LayoutProblem
from runtime_adapters.triton.adapter import TritonAdapter, build_layout, strip_name
from runtime_adapters.v2_repository import MemorySample, ProcessTreeMeter, delta, normalise_state


def test_normalise_state_spellings():
    assert normalise_state("State.READY") == "READY"  # MLServer: str() of a Python enum
    assert normalise_state("READY") == "READY"
    assert normalise_state("State.UNAVAILABLE") == "UNAVAILABLE"
    assert normalise_state("loading") == "LOADING"


def test_model_settings_by_type(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.joblib").write_bytes(b"x")
    s = model_settings("id-1", "sklearn", tmp_path / "m")
    assert s == {
        "name": "id-1",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str((tmp_path / "m" / "model.joblib").resolve())},
    }
    (tmp_path / "x.json").write_text("{}")
    assert (
        model_settings("x", "xgboost", tmp_path / "x.json")["implementation"]
        == "mlserver_xgboost.XGBoostModel"
    )
    with pytest.raises(LayoutProblem, match="no xgboost model file"):
        model_settings("x", "xgboost", tmp_path / "m")


def test_model_settings_from_the_artifact(tmp_path):
    art = tmp_path / "custom"
    art.mkdir()
    (art / "model-settings.json").write_text(
        json.dumps(
            {"name": "other", "implementation": "my.Model", "parameters": {"uri": "./w.bin", "version": "v2"}}
        )
    )
    s = model_settings("mine", "mlserver", art)
    assert s["name"] == "mine" and s["implementation"] == "my.Model"
    assert s["parameters"] == {"uri": str((art / "w.bin").resolve()), "version": "v2"}
    (art / "model-settings.json").write_text("{}")
    with pytest.raises(LayoutProblem, match="no 'implementation'"):
        model_settings("mine", "mlserver", art)
    (art / "model-settings.json").unlink()
    with pytest.raises(LayoutProblem, match=r"needs a model-settings\.json"):
        model_settings("mine", "mlserver", art)


def test_type_names():
    assert MLServerAdapter.canonical_type(MLServerAdapter.__new__(MLServerAdapter), "mt:SKLearn") == "sklearn"
    triton = TritonAdapter.__new__(TritonAdapter)
    assert triton.canonical_type("onnx:1") == "onnx"
    assert triton.canonical_type("torchscript") == "pytorch"
    with pytest.raises(UnsupportedModelType):
        triton.canonical_type("sklearn")


def test_triton_single_file_layout(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.onnx").write_bytes(b"onnx")
    build_layout("onnx", src, tmp_path / "repo" / "m")
    link = tmp_path / "repo" / "m" / "1" / "model.onnx"
    assert link.is_symlink() and os.readlink(link) == str((src / "weights.onnx").resolve())
    assert (tmp_path / "repo" / "m" / "config.pbtxt").read_text() == 'platform: "onnxruntime_onnx"\n'


def test_triton_savedmodel_and_own_config(tmp_path):
    sm = tmp_path / "tf"
    (sm / "variables").mkdir(parents=True)
    (sm / "saved_model.pb").write_bytes(b"pb")
    build_layout("tensorflow", sm, tmp_path / "repo" / "tf")
    assert (tmp_path / "repo" / "tf" / "1" / "model.savedmodel").resolve() == sm.resolve()
    pt = tmp_path / "pt"
    pt.mkdir()
    (pt / "model.pt").write_bytes(b"pt")
    (pt / "config.pbtxt").write_text('name: "x"\nbackend: "pytorch"\ninput [ { name: "in" } ]\n')
    build_layout("pytorch", pt, tmp_path / "repo" / "pt")
    assert (
        tmp_path / "repo" / "pt" / "config.pbtxt"
    ).read_text() == 'backend: "pytorch"\ninput [ { name: "in" } ]\n'


def test_triton_dir_layout_and_ambiguity(tmp_path):
    art = tmp_path / "art"
    (art / "2").mkdir(parents=True)
    (art / "2" / "model.plan").write_bytes(b"p")
    (art / "labels.txt").write_text("a\n")
    (art / "config.pbtxt").write_text('name: "old"\nplatform: "tensorrt_plan"\n')
    build_layout("tensorrt", art, tmp_path / "repo" / "t")
    out = tmp_path / "repo" / "t"
    assert (out / "2").is_symlink() and (out / "labels.txt").is_symlink()
    assert (out / "config.pbtxt").read_text() == 'platform: "tensorrt_plan"\n'
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.onnx").write_bytes(b"a")
    (two / "b.onnx").write_bytes(b"b")
    with pytest.raises(LayoutProblem, match="ambiguous"):
        build_layout("onnx", two, tmp_path / "repo" / "amb")


def test_strip_name_keeps_nested_names():
    cfg = 'name: "top"\nplatform: "x"\ninput [\n  {\n    name: "in"\n  }\n]\n'
    assert strip_name(cfg) == 'platform: "x"\ninput [\n  {\n    name: "in"\n  }\n]\n'


def test_process_tree_meter_and_delta():
    meter = ProcessTreeMeter(os.getpid, gpu=False)
    sample = meter.sample()
    assert sample is not None and sample.rss > 0 and sample.device is None
    assert ProcessTreeMeter(lambda: None, gpu=False).sample() is None
    assert delta(MemorySample(100, None), MemorySample(350, None)) == (250, None)
    assert delta(MemorySample(100, 10), MemorySample(90, 30)) == (-10, 20)
    assert delta(None, MemorySample(1, None)) == (None, None)


class _IdleServer:
    """The adapter's view of a model server that answers ready and holds nothing (only ``server_up`` asks)."""

    address = "127.0.0.1:1"

    async def version(self) -> str:
        return "test"

    async def index(self) -> dict[str, str]:
        return {}

    async def close(self) -> None:
        pass


async def test_a_server_lost_during_a_layout_fails_the_load_unavailable_not_the_model(tmp_path):
    """MLServer killed while a load writes its folder: server_down removes every folder, the one being
    written included. The load must fail as the server's outage (UNAVAILABLE, retried by the mesh), not
    as the model's failure (the mesh would remember that for the load-failure expiry)."""
    from mesh.errors import RuntimeUnavailable
    from puller.pull import LocalArtifact
    from runtime_adapters.sizing import SizeModel

    class DiesMidLayout(MLServerAdapter):
        def write_layout(self, model_id, model_type, artifact_path, folder, root=None):
            folder.mkdir(parents=True)
            self.server_down("MLServer exited with code -9")  # as the supervisor's callback would, meanwhile
            (folder / ".model-settings.json.tmp").write_text("{}")  # FileNotFoundError: the folder is gone

    art = tmp_path / "m"
    art.mkdir()
    (art / "model.joblib").write_bytes(b"x")
    adapter = DiesMidLayout(
        client=_IdleServer(),
        repo_dir=tmp_path / "repo",
        capacity_bytes=1 << 30,
        sizes=SizeModel(),
        meter=None,
    )
    await adapter.server_up()
    try:
        with pytest.raises(RuntimeUnavailable, match="went down while m1 was being laid out"):
            await adapter.load("m1", "sklearn", LocalArtifact("m1", art, 1), "")
        assert adapter.loaded_models() == []
    finally:
        await adapter.close()
