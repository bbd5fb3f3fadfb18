"""Unit tests of the Ray Serve peer comparison's pure parts: the Ray side's V2 codec answers byte for byte what
the built-in runtime answers, the client's miss classification from trailing metadata, and the ratio table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

from loadtests.ray_serve import LOAD_MS_KEY, REPLICA_KEY, codec
from loadtests.ray_serve.control import RayHost, RayHostError
from loadtests.ray_serve.driver import RayMisses, ratios
from mesh.client import build_infer_request
from protos.inference import grpc_predict_v2_pb2 as pb
from runtime_adapters.builtin import tensors
from runtime_adapters.builtin.models import SklearnModel

ROWS = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


def _builtin_response(estimator, request: pb.ModelInferRequest) -> bytes:
    """What runtime_adapters.builtin.inference.model_infer returns for ``request``."""
    inputs, raw = tensors.decode_inputs(request)
    outputs = SklearnModel(estimator).predict(inputs, [o.name for o in request.outputs])
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    return tensors.encode_outputs(response, outputs, raw=raw).SerializeToString()


def _ray_response(estimator, request: pb.ModelInferRequest) -> bytes:
    """What loadtests.ray_serve.app's ModelInfer returns for ``request`` (same steps, without Ray)."""
    x, raw = codec.decode_input(request)
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    return codec.encode_outputs(response, codec.predict(estimator, x), raw=raw).SerializeToString()


@pytest.fixture(scope="module")
def estimators():
    y_reg = np.array([1.0, 2.5, -3.0])
    ridge32 = Ridge(alpha=0.5).fit(ROWS, y_reg)  # float32 in: float32 coefficients and outputs
    ridge64 = Ridge(alpha=0.5).fit(ROWS.astype(np.float64), y_reg)
    logistic = LogisticRegression(max_iter=200).fit(ROWS, np.array([0, 1, 2]))  # int labels + probabilities
    return {"ridge32": ridge32, "ridge64": ridge64, "logistic": logistic}


@pytest.mark.parametrize("name", ["ridge32", "ridge64", "logistic"])
@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("rows", [1, 3])
def test_ray_codec_answers_what_the_builtin_runtime_answers(estimators, name, raw, rows) -> None:
    request = build_infer_request("many-m0007", {"input-0": ROWS[:rows]}, raw=raw, datatype="FP32")
    request.id = "req-1"
    ours = _ray_response(estimators[name], request)
    assert ours == _builtin_response(estimators[name], request)
    decoded = pb.ModelInferResponse.FromString(ours)
    want = ["predict", "predict_proba"] if name == "logistic" else ["predict"]
    assert [o.name for o in decoded.outputs] == want
    assert len(decoded.raw_output_contents) == (len(decoded.outputs) if raw else 0)


def test_ray_codec_refuses_what_the_benchmark_never_sends() -> None:
    two = build_infer_request("m", {"a": ROWS[:1], "b": ROWS[:1]}, raw=True, datatype="FP32")
    with pytest.raises(ValueError, match="exactly 1 input"):
        codec.decode_input(two)
    short = build_infer_request("m", {"input-0": ROWS[:1]}, raw=True, datatype="FP32")
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    with pytest.raises(ValueError, match="needs 16 bytes"):
        codec.decode_input(short)
    strings = pb.ModelInferRequest(model_name="m")
    strings.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    with pytest.raises(ValueError, match="unsupported datatype 'BYTES'"):
        codec.decode_input(strings)
    with pytest.raises(ValueError, match="numbers only"):
        codec.encode_outputs(pb.ModelInferResponse(), {"label": np.array(["a"])}, raw=True)


def test_ray_misses_come_from_trailing_metadata_only() -> None:
    misses = RayMisses()
    assert misses.classify("m", "ray") == "hit"
    assert misses.after("hit", (("request_id", "abc"),)) == "hit"
    assert misses.after("hit", None) == "hit"
    assert misses.after("hit", (("request_id", "abc"), (LOAD_MS_KEY, "1.250"), (REPLICA_KEY, "r1"))) == "miss"
    assert misses.after("hit", ((LOAD_MS_KEY, "0.750"), (REPLICA_KEY, "r2"))) == "miss"
    assert misses.load_ms == [1.25, 0.75] and dict(misses.by_replica) == {"r1": 1, "r2": 1}
    misses.reset()
    assert misses.load_ms == [] and not misses.by_replica


def _row(system: str, scale: int, p99: float, rps: float, errors: int = 0, setting: str = "") -> dict:
    return {
        "system": system,
        "scale": scale,
        "p99_ms": p99,
        "throughput_rps": rps,
        "errors": errors,
        "setting": setting or system,
    }


def test_ratios_compare_the_mesh_with_the_ray_setting_of_lowest_p99() -> None:
    rows = [
        _row("mesh", 1, 40.0, 900.0),
        _row("ray", 1, 100.0, 300.0, setting="mo=8"),
        _row("ray", 1, 80.0, 420.0, setting="mo=32"),
        _row("ray", 1, 10.0, 5.0, errors=3, setting="mo=128 (failed requests)"),
        _row("mesh", 2, 120.0, 500.0),
        _row("ray", 2, 100.0, 400.0, setting="mo=32"),
        _row("ray", 3, 100.0, 400.0),  # no mesh row at this scale: no ratio
    ]
    one, two = ratios(rows)
    assert one["scale"] == 1 and one["ray_setting"] == "mo=32"
    assert one["p99_mesh_over_ray"] == 0.5 and one["p99_goal_met"] is True
    assert (
        one["throughput_mesh_over_ray"] == pytest.approx(2.143, abs=1e-3)
        and one["throughput_goal_met"] is True
    )
    assert two["p99_mesh_over_ray"] == 1.2 and two["p99_goal_met"] is False
    assert two["throughput_mesh_over_ray"] == 1.25 and two["throughput_goal_met"] is False


def test_ray_host_refuses_a_temp_dir_too_long_for_rays_unix_sockets(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60)
    with pytest.raises(RayHostError, match="107-byte limit"):
        RayHost(Path("python"), tmp_path, deep, grpc_port=1, http_port=2, log_path=tmp_path / "log")
