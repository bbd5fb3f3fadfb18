"""Measured model sizes through the MLServer adapter's SPI (a real MLServer): a model known to be ~300x larger
on disk (iris-rf-large, 800 full trees, vs iris-rf-small, 4 shallow trees) reports a much larger size,
within stated bounds, and the measurement teaches the sklearn multiplier used by predictModelSize.

Bounds: the large model's size is between its disk size and 20x it (the clamp in sizing.py); the small
one is under a tenth of the large one. The first sklearn loads are warm-ups: the first load of a type
after MLServer starts is reported as an estimate (it pays the library import), and the first random
forest also imports sklearn.ensemble inside MLServer."""

from __future__ import annotations

import pytest

from protos.mmesh import model_runtime_pb2 as rt
from tests.support.mlserver import AdapterProcess, free_port, mlserver_bin, repository_index, runtime_samples  # noqa: F401

pytestmark = pytest.mark.timeout(180)


def test_bigger_models_report_bigger_sizes(tmp_path, runtime_samples, mlserver_bin):  # noqa: F811
    samples_dir, entries = runtime_samples
    grpc_port = free_port()
    args = ["--mlserver-grpc", f"127.0.0.1:{grpc_port}", "--start-mlserver", "--mlserver-bin", str(mlserver_bin),
            "--model-dir", str(tmp_path / "models"), "--local-root", str(samples_dir),
            "--capacity", str(256 << 20)]  # fmt: skip
    small, large = entries["sklearn-iris-rf-small"], entries["sklearn-iris-rf-large"]
    with AdapterProcess("runtime_adapters.mlserver", args, log_path=tmp_path / "adapter.log") as adapter:

        def load(model_id: str, entry: dict) -> int:
            req = rt.LoadModelRequest(modelId=model_id, modelType="sklearn", modelPath=entry["path"])
            return adapter.spi.loadModel(req, timeout=60).sizeInBytes

        def predict(entry: dict) -> int:
            req = rt.PredictModelSizeRequest(modelId="p", modelType="sklearn", modelPath=entry["path"])
            return adapter.spi.predictModelSize(req, timeout=5).sizeInBytes

        disk = large["disk_size_bytes"]
        predicted_before = predict(large)
        assert predicted_before == int(disk * 2.0)  # the sklearn start multiplier

        load("warm-lr", entries["sklearn-iris-lr"])
        load("warm-rf", small)
        small_size = load("rf-small", small)
        large_size = load("rf-large", large)
        assert disk <= large_size <= 20 * disk, (large_size, disk)
        assert small_size < large_size / 10, (small_size, large_size)
        assert adapter.spi.modelSize(rt.ModelSizeRequest(modelId="rf-large")).sizeInBytes == large_size

        # The measurement moved the learned multiplier towards measured/disk.
        predicted_after = predict(large)
        assert predicted_after != predicted_before
        assert (predicted_after > predicted_before) == (large_size > predicted_before)

        index = repository_index(f"127.0.0.1:{grpc_port}")
        assert {index[m] for m in ("warm-lr", "warm-rf", "rf-small", "rf-large")} == {"READY"}
