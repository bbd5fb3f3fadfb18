"""Unit tests of the built-in runtime's type names, artifact lookup, sizing and settings (no processes)."""

from __future__ import annotations

import sys

import pytest

from mesh.errors import InvalidRequest
from runtime_adapters.builtin.formats import ArtifactProblem, canonical_type, find_model_file
from runtime_adapters.errors import ModelNotLoaded, UnsupportedModelType
from runtime_adapters.server import KeyedLocks, type_from_model_key
from runtime_adapters.settings import GIB, MIB, RuntimeSettings, derive_capacity
from runtime_adapters.sizing import MIN_MODEL_BYTES, RssMeter, SizeModel, disk_size


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("sklearn", "sklearn"),
        ("SKLearn", "sklearn"),
        ("mt:sklearn", "sklearn"),
        ("sklearn:1", "sklearn"),
        ("mt:xgboost:1", "xgboost"),
        ("scikit-learn", "sklearn"),
        (" LightGBM ", "lightgbm"),
        ("lgbm", "lightgbm"),
        ("onnx:1.0", "onnx"),
    ],
)
def test_canonical_type(raw: str, want: str) -> None:
    assert canonical_type(raw) == want


@pytest.mark.parametrize("raw", ["", "tensorflow", "mt:", "pytorch:1"])
def test_unsupported_type_names_it_and_lists_supported(raw: str) -> None:
    with pytest.raises(UnsupportedModelType) as info:
        canonical_type(raw)
    assert isinstance(info.value, InvalidRequest)
    assert "sklearn" in info.value.message and "onnx" in info.value.message
    if raw:
        assert raw in info.value.message


def test_type_from_model_key() -> None:
    assert type_from_model_key('{"storage_key": "s3", "model_type": {"name": "xgboost"}}') == "xgboost"
    assert type_from_model_key('{"model_type": "onnx"}') == "onnx"
    assert type_from_model_key("") == ""
    assert type_from_model_key("not json") == ""
    assert type_from_model_key("[1]") == ""


def test_find_model_file(tmp_path) -> None:
    f = tmp_path / "a.joblib"
    f.write_bytes(b"x")
    assert find_model_file(f, "sklearn") == f
    d = tmp_path / "d"
    (d / "1").mkdir(parents=True)
    (d / "model-settings.json").write_text("{}")
    (d / "1" / "model.json").write_text("{}")
    assert find_model_file(d, "xgboost") == d / "1" / "model.json"  # nested, settings file ignored
    (d / "other.json").write_text("{}")
    assert find_model_file(d, "xgboost") == d / "other.json"  # shallower wins
    (d / "model.json").write_text("{}")
    assert find_model_file(d, "xgboost") == d / "model.json"  # model.* wins a tie
    (d / "x.pkl").write_bytes(b"")
    (d / "y.pkl").write_bytes(b"")
    with pytest.raises(ArtifactProblem, match=r"ambiguous sklearn artifact: directory .*/d holds"):
        find_model_file(d, "sklearn")
    with pytest.raises(ArtifactProblem, match=r"no onnx model file \(\.onnx\) in directory .*/d"):
        find_model_file(d, "onnx")
    with pytest.raises(ArtifactProblem, match="does not exist"):
        find_model_file(tmp_path / "missing", "onnx")


def test_size_prediction_and_learning() -> None:
    sizes = SizeModel(default_size=1_000_000)
    assert sizes.predict("sklearn", None) == 1_000_000
    assert sizes.predict("sklearn", 0) == 1_000_000
    assert sizes.predict("sklearn", 1 << 20) == 2 << 20
    assert sizes.predict("xgboost", 1 << 20) == int(2.5 * (1 << 20))
    assert sizes.predict("other", 1 << 20) == int(1.25 * (1 << 20))
    assert sizes.predict("sklearn", 10) == MIN_MODEL_BYTES
    # A genuine measurement of a big model moves the multiplier towards measured/disk.
    m = sizes.measured("sklearn", 4 << 20, 16 << 20)
    assert (m.source, m.size_bytes) == ("rss", 16 << 20)
    assert 2.0 < sizes.multiplier("sklearn") < 4.0
    # Small models do not teach; allocator reuse falls back to the estimate; small deltas are floored.
    before = sizes.multiplier("onnx")
    assert sizes.measured("onnx", 1000, 50 << 20).source == "rss"
    assert sizes.multiplier("onnx") == before
    est = sizes.measured("onnx", 1 << 20, 0)
    assert (est.source, est.size_bytes) == ("estimate", sizes.predict("onnx", 1 << 20))
    assert sizes.measured("onnx", 1 << 20, None).source == "estimate"
    floor = sizes.measured("onnx", 1 << 20, 4096)
    assert (floor.source, floor.size_bytes) == ("rss-floor", 1 << 20)


def test_override_multiplier() -> None:
    assert SizeModel(override_multiplier=3.0).predict("onnx", 1 << 20) == 3 << 20
    assert SizeModel(override_multiplier=3.0).predict("unknown", 1 << 20) == 3 << 20


def test_rss_meter_delta_and_imports() -> None:
    values = iter([100, 350, 1000, 2000])
    meter = RssMeter(rss=lambda: next(values))
    assert meter.run(lambda: "ok", wait_s=1) == ("ok", 250)

    def imports() -> str:
        sys.modules["_rt_test_fake_module"] = sys  # looks like an import happened
        return "x"

    try:
        assert meter.run(imports, wait_s=1) == ("x", None)
    finally:
        del sys.modules["_rt_test_fake_module"]


def test_disk_size(tmp_path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "b").write_bytes(b"y" * 5)
    assert disk_size(tmp_path) == 15
    assert disk_size(tmp_path / "a") == 10
    assert disk_size(tmp_path / "nope") is None
    assert disk_size(tmp_path, max_entries=1) is None


def test_settings_precedence_and_capacity() -> None:
    env = {"LOADTIME_TIMEOUT": "5000", "CONTAINER_MEM_REQ_BYTES": str(2 * GIB), "MEM_BUFFER_BYTES": str(MIB)}
    s = RuntimeSettings.from_env(env, load_timeout_ms=None, loading_concurrency=3)
    assert s.load_timeout_ms == 5000 and s.loading_concurrency == 3
    assert s.capacity_bytes == 2 * GIB - MIB
    assert RuntimeSettings.from_env(env, load_timeout_ms=700).load_timeout_ms == 700
    assert RuntimeSettings.from_env(env, capacity_bytes=123).capacity_bytes == 123
    assert derive_capacity(container_mem=None, buffer=256 * MIB, cgroup_limit=4 * GIB) == 4 * GIB - 256 * MIB
    assert derive_capacity(container_mem=100 * MIB, buffer=256 * MIB, cgroup_limit=None) == 50 * MIB
    with pytest.raises(ValueError) as e:
        RuntimeSettings.from_env({"LOADING_CONCURRENCY": "many"})
    assert str(e.value) == "LOADING_CONCURRENCY: 'many' is not a number"
    with pytest.raises(ValueError) as e:
        RuntimeSettings.from_env({}, load_timeout_ms=5, capacity_bytes=1)
    assert str(e.value) == "--load-timeout-ms: '5' is not a number >= 100"
    with pytest.raises(ValueError) as e:
        RuntimeSettings.from_env({"LOADTIME_TIMEOUT": "abc"})
    assert str(e.value) == "LOADTIME_TIMEOUT: 'abc' is not a number"
    with pytest.raises(ValueError) as e:
        RuntimeSettings.from_env({"CONTAINER_MEM_REQ_BYTES": "2Gi"})
    assert str(e.value) == "CONTAINER_MEM_REQ_BYTES: '2Gi' is not a number"
    assert RuntimeSettings.from_env({"LOADTIME_TIMEOUT": " "}).load_timeout_ms == 90_000  # blank = unset
    assert RuntimeSettings.from_env({"LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_model_not_loaded_wording() -> None:
    exc = ModelNotLoaded("m1")
    assert exc.message == "model 'm1' is not loaded" and str(exc) == exc.message
    assert exc.grpc_code.name == "NOT_FOUND"


async def test_keyed_locks_serialise_and_clean_up() -> None:
    import asyncio

    locks = KeyedLocks()
    order: list[str] = []

    async def op(name: str) -> None:
        async with locks.hold("m"):
            order.append(f"{name}-in")
            await asyncio.sleep(0.01)
            order.append(f"{name}-out")

    await asyncio.gather(op("a"), op("b"))
    assert order == ["a-in", "a-out", "b-in", "b-out"]
    assert locks._locks == {}
