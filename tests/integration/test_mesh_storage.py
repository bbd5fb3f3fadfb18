"""Models stored in S3 (boto3 and MinIO client), behind HTTP and on local disk, served through a real mesh
pod: the runtime pulls them inside loadModel, the pod serves them, and unloading removes the pulled files."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
import uuid

import numpy as np
import pytest

from mesh.client import MeshClientError
from tests.support.mesh_cluster import FAST_POD_ARGS, MeshTestCluster, wait_for
from tests.support.s3 import moto_server  # noqa: F401  (fixture)
from tests.support.samples import samples  # noqa: F401  (fixture)


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "http"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _check(client, model_id, sample):
    inp = sample["input"]
    out = client.infer(model_id, {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])})
    for name, want in sample["expected"].items():
        np.testing.assert_allclose(np.asarray(out[name]).ravel(), want["data"], rtol=1e-4, atol=1e-5)


def test_models_from_s3_minio_http_and_local_through_the_mesh(
    etcd_server,
    samples,  # noqa: F811
    moto_server,  # noqa: F811
    http_dir,
    tmp_path,
):
    lr, xgb = samples["by_id"]["sklearn-iris-lr"], samples["by_id"]["xgboost-iris"]
    s3 = moto_server.client()
    bucket = moto_server.new_bucket(s3)
    # a single object, and a prefix of several files (the model plus files the runtime must ignore)
    s3.upload_file(str(samples["dir"] / lr["file"]), bucket, "single/iris-lr.joblib")
    s3.upload_file(str(samples["dir"] / xgb["file"]), bucket, "prefix/xgb/model.json")
    s3.put_object(Bucket=bucket, Key="prefix/xgb/README.txt", Body=b"notes")
    s3.put_object(Bucket=bucket, Key="prefix/xgb/meta/info.txt", Body=b"{}")
    http_root, http_url = http_dir
    shutil.copy(samples["dir"] / lr["file"], http_root / "lr.joblib")
    config = tmp_path / "storage.json"
    config.write_text(
        json.dumps(
            {
                "s3": moto_server.entry(bucket=bucket),
                "minio": moto_server.entry(bucket=bucket, client="minio"),
                "web": {"type": "http", "url": http_url},
            }
        )
    )
    cluster = MeshTestCluster(
        pods=1,
        capacity=50_000_000,
        models_dir=samples["dir"],
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        pod_args=(*FAST_POD_ARGS, "--storage-config", str(config)),  # `mesh serve` hands it to its runtime
    )
    with cluster:
        c = cluster.client()
        pulled = cluster.data_dir / "pod-0" / "models"
        cases = [
            ("s3-single", "sklearn", "single/iris-lr.joblib", {"storage_key": "s3"}, lr),
            ("s3-prefix", "xgboost", "prefix/xgb", {"storage_key": "s3"}, xgb),
            ("minio-single", "sklearn", "single/iris-lr.joblib", {"storage_key": "minio"}, lr),
            ("http-file", "sklearn", f"{http_url}/lr.joblib", {"storage_key": "web"}, lr),
            ("local-dir", "xgboost", xgb["path"], None, xgb),
        ]
        for model_id, mtype, path, key, sample in cases:
            c.register(model_id, mtype, path, json.dumps(key) if key else "")
            _check(c, model_id, sample)
            assert c.status(model_id)["status"] == "LOADED"
        remote = [case[0] for case in cases if case[3]]
        for model_id in remote:
            assert (pulled / model_id).is_dir(), f"{model_id} was not pulled into its own directory"
        assert (pulled / "s3-prefix" / "meta" / "info.txt").is_file(), "prefix structure not kept"
        for model_id in remote:
            c.unregister(model_id)
        wait_for(
            lambda: not any((pulled / m).exists() for m in remote), timeout=20, what="pulled files removed"
        )
        assert (samples["dir"] / xgb["file"]).is_file(), "a local model's source must never be deleted"

        # bad storage input: LOADING_FAILED with the cause, no secret in any message, nothing left behind
        bad = [
            ("no-such-key", "single/iris-lr.joblib", {"storage_key": "nope"}, "nope"),
            ("no-such-object", "missing/model.joblib", {"storage_key": "s3"}, "missing/model.joblib"),
            ("no-such-url", f"{http_url}/absent.joblib", {"storage_key": "web"}, "absent.joblib"),
        ]
        for model_id, path, key, needle in bad:
            c.register(model_id, "sklearn", path, json.dumps(key))
            with pytest.raises(MeshClientError) as err:
                c.infer(model_id, [[5.0, 2.0, 3.5, 1.0]])
            assert needle in err.value.message, (model_id, err.value.message)
            assert moto_server.secret_access_key not in err.value.message
            st = c.status(model_id)
            assert st["status"] == "LOADING_FAILED" and not any(
                moto_server.secret_access_key in e for e in st["errors"]
            )
            assert not (pulled / model_id).exists()
        assert moto_server.secret_access_key not in cluster.log(0)
        _check(c, "local-dir", xgb)  # other models unaffected
