"""The Triton adapter against our own V2 repository-API server (tests/support/v2repo_server.py; no Triton
binary installs here): repository layout on disk at load, load/unload/index calls, error codes, a hung load
cancelled at its timeout and unloaded when it finishes, and inference through a real mesh pod, including
the mesh reloading a model the server lost (Triton's UNAVAILABLE "Request for unknown model")."""

from __future__ import annotations

import sys
import time
import uuid

import grpc
import numpy as np
import pytest

from mesh.client import MeshClient
from mesh.devtools.demo import check_outputs
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from protos.mmesh import model_runtime_pb2 as rt
from tests.support.mlserver import AdapterProcess, MeshPod, free_port, repository_index, runtime_samples  # noqa: F401
from tests.support.v2repo_server import V2RepoServerProcess

pytestmark = pytest.mark.timeout(180)


def _adapter_args(server: V2RepoServerProcess, tmp_path, samples_dir, *extra: str) -> list[str]:
    assert server.proc is not None
    return ["--triton-grpc", server.address, "--triton-pid", str(server.proc.pid), "--repo", str(server.repo),
            "--model-dir", str(tmp_path / "models"), "--local-root", str(samples_dir), "--local-root",
            str(tmp_path / "artifacts"), "--capacity", str(64 << 20), "--health-interval", "0.5", *extra]  # fmt: skip


def _infer_direct(address: str, model: str, entry: dict) -> dict[str, np.ndarray]:
    from mesh.client import build_infer_request, decode_outputs

    req = build_infer_request(
        model, [entry["row"]], datatype=entry["datatype"], input_name=entry["input_name"]
    )
    with grpc.insecure_channel(address) as ch:
        return decode_outputs(v2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=10))


def test_layout_load_unload_and_errors(tmp_path, runtime_samples):  # noqa: F811
    samples_dir, entries = runtime_samples
    onnx = entries["onnx-iris"]
    # A Triton-layout artifact whose config names another model: the adapter must drop that name.
    art = tmp_path / "artifacts" / "triton-dir"
    (art / "3").mkdir(parents=True)
    (art / "3" / "model.onnx").write_bytes((samples_dir / onnx["path"] / "model.onnx").read_bytes())
    (art / "config.pbtxt").write_text('name: "someone-else"\nplatform: "onnxruntime_onnx"\n')

    with V2RepoServerProcess(tmp_path / "repo", tmp_path / "calls.jsonl") as server:
        args = _adapter_args(server, tmp_path, samples_dir)
        with AdapterProcess("runtime_adapters.triton", args, log_path=tmp_path / "adapter.log") as adapter:
            status = adapter.spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=10)
            assert status.status == rt.RuntimeStatusResponse.READY
            assert status.runtimeVersion == "v2repo-test-1"
            assert status.capacityInBytes == 64 << 20
            assert set(status.methodInfos) == {
                f"inference.GRPCInferenceService/{m}" for m in ("ModelInfer", "ModelMetadata", "ModelReady")
            }
            assert all(list(mi.idInjectionPath) == [1] for mi in status.methodInfos.values())

            resp = adapter.spi.loadModel(
                rt.LoadModelRequest(modelId="m1", modelType="onnx", modelPath=onnx["path"])
            )
            assert resp.sizeInBytes > 0
            load = [c for c in server.recorded() if c["rpc"] == "load"][-1]
            assert load["ok"] and load["name"] == "m1"
            assert sorted(load["files"]) == ["1/model.onnx", "config.pbtxt"]
            assert 'platform: "onnxruntime_onnx"' in load["config"]
            assert (server.repo / "m1" / "1" / "model.onnx").is_symlink()
            assert check_outputs(_infer_direct(server.address, "m1", onnx), onnx["expected"])

            adapter.spi.loadModel(rt.LoadModelRequest(modelId="m2", modelType="triton", modelPath=str(art)))
            load = [c for c in server.recorded() if c["rpc"] == "load"][-1]
            assert load["name"] == "m2" and sorted(load["files"]) == ["3/model.onnx", "config.pbtxt"]
            assert "someone-else" not in load["config"] and "onnxruntime_onnx" in load["config"]
            assert repository_index(server.address) == {"m1": "READY", "m2": "READY"}

            adapter.spi.unloadModel(rt.UnloadModelRequest(modelId="m1"))
            assert repository_index(server.address)["m1"] == "UNAVAILABLE"
            assert not (server.repo / "m1").exists()
            adapter.spi.unloadModel(rt.UnloadModelRequest(modelId="m1"))  # idempotent

            with pytest.raises(grpc.RpcError) as err:
                adapter.spi.loadModel(
                    rt.LoadModelRequest(modelId="bad", modelType="sklearn", modelPath=onnx["path"])
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no load attempted
            with pytest.raises(grpc.RpcError) as err:
                adapter.spi.loadModel(
                    rt.LoadModelRequest(modelId="bad", modelType="pytorch", modelPath=onnx["path"])
                )
            assert err.value.code() == grpc.StatusCode.INTERNAL and "no pytorch model" in err.value.details()
            assert "bad" not in repository_index(server.address)  # never reached the server

            # runtimeStatus (a mesh (re)starting) purges everything this adapter loaded.
            adapter.spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=10)
            assert repository_index(server.address)["m2"] == "UNAVAILABLE"


def test_hung_load_is_cancelled_then_unloaded(tmp_path, runtime_samples):  # noqa: F811
    samples_dir, entries = runtime_samples
    onnx = entries["onnx-iris"]
    with V2RepoServerProcess(tmp_path / "repo", tmp_path / "calls.jsonl", load_delay_s=2.0) as server:
        args = _adapter_args(server, tmp_path, samples_dir, "--load-timeout-ms", "500")
        with AdapterProcess("runtime_adapters.triton", args, log_path=tmp_path / "adapter.log") as adapter:
            with pytest.raises(grpc.RpcError) as err:
                adapter.spi.loadModel(
                    rt.LoadModelRequest(modelId="slow", modelType="onnx", modelPath=onnx["path"])
                )
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The server finishes the abandoned load later; the adapter's sweep unloads it.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                calls = server.recorded()
                loaded = any(c["rpc"] == "load" and c["ok"] for c in calls)
                if loaded and repository_index(server.address).get("slow") == "UNAVAILABLE":
                    break
                time.sleep(0.25)
            else:
                pytest.fail(f"abandoned load not unloaded: {server.recorded()}")


def test_inference_through_mesh_and_reload_after_server_lost_model(tmp_path, runtime_samples, etcd_server):  # noqa: F811
    samples_dir, entries = runtime_samples
    onnx = entries["onnx-iris"]
    with V2RepoServerProcess(tmp_path / "repo", tmp_path / "calls.jsonl") as server:
        runtime_port = free_port()
        runtime_cmd = [
            sys.executable, "-m", "runtime_adapters.triton", "--host", "127.0.0.1", "--port", str(runtime_port),
            *_adapter_args(server, tmp_path, samples_dir),
        ]  # fmt: skip
        pod = MeshPod(etcd=etcd_server.endpoint, kv_root=f"/mmtest/{uuid.uuid4().hex}/", runtime_cmd=runtime_cmd,
                      runtime_port=runtime_port, serving_address=server.address, log_path=tmp_path / "pod.log")  # fmt: skip
        with pod, MeshClient(pod.address, timeout=30) as client:
            client.register("tri-onnx", "onnx", onnx["path"])
            out = client.infer(
                "tri-onnx", [onnx["row"]], datatype=onnx["datatype"], input_name=onnx["input_name"]
            )
            assert check_outputs(out, onnx["expected"]), out
            assert repository_index(server.address) == {"tri-onnx": "READY"}

            # The server loses the model behind the mesh's back: Triton answers UNAVAILABLE "Request for
            # unknown model", which the mesh reads as "not here" and reloads.
            with grpc.insecure_channel(server.address) as ch:
                v2_grpc.GRPCInferenceServiceStub(ch).RepositoryModelUnload(
                    v2.RepositoryModelUnloadRequest(model_name="tri-onnx"), timeout=5
                )
            out = client.infer(
                "tri-onnx", [onnx["row"]], datatype=onnx["datatype"], input_name=onnx["input_name"]
            )
            assert check_outputs(out, onnx["expected"]), out
            loads = [c for c in server.recorded() if c["rpc"] == "load" and c["name"] == "tri-onnx"]
            assert len(loads) == 2
