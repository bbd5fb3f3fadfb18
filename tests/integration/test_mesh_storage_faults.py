"""Storage faults seen through a real mesh pod (etcd, pod, built-in runtime, real endpoints): an
unreachable S3 or HTTP endpoint and a storage_params attack are load failures recorded in the model's
status with the runtime's (redacted) message, never "runtime unavailable", and the pod keeps serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mesh.client import MeshClientError
from tests.support.mesh_cluster import make_cluster
from tests.support.s3 import free_port
from tests.support.samples import samples  # noqa: F401  (fixture)

PW = "mesh-side-password-77"


def test_unreachable_storage_is_recorded_as_a_load_failure(etcd_server, samples, tmp_path):  # noqa: F811
    closed = free_port()
    config = tmp_path / "storage.json"
    config.write_text(
        json.dumps(
            {
                "s3down": {"type": "s3", "endpoint_url": f"http://127.0.0.1:{closed}", "bucket": "b",
                           "access_key_id": "AKIAEXAMPLE", "secret_access_key": PW},
                "webdown": {"type": "http", "url": f"http://alice:{PW}@127.0.0.1:{closed}/m"},
            }
        )
    )  # fmt: skip
    env = {"PULLER_MAX_ATTEMPTS": "2", "PULLER_RETRY_BACKOFF_S": "0.01", "PULLER_CONNECT_TIMEOUT_S": "2"}
    lr = samples["by_id"]["sklearn-iris-lr"]
    with make_cluster(
        etcd_server.endpoint, samples, extra=("--storage-config", str(config)), env=env
    ) as cluster:
        c = cluster.client()
        cases = [
            ("s3-down", {"storage_key": "s3down"}, "s3 storage 's3down' at 127.0.0.1:", "unreachable"),
            ("http-down", {"storage_key": "webdown"}, "http storage 'webdown' at 127.0.0.1:", "unreachable"),
            ("attack", {"storage_key": "webdown", "storage_params": {"url": "http://198.51.100.7/"}},
             "storage_params 'url' may not be set for storage key 'webdown'", ""),
        ]  # fmt: skip
        for model_id, key, where, what in cases:
            c.register(model_id, "sklearn", "model.joblib", json.dumps(key))
            with pytest.raises(MeshClientError) as err:
                c.infer(model_id, [[5.0, 2.0, 3.5, 1.0]])
            assert where in err.value.message and what in err.value.message, err.value.message
            assert "runtime unavailable" not in err.value.message and err.value.code != "UNAVAILABLE"
            st = c.status(model_id)
            assert st["status"] == "LOADING_FAILED", st
            assert any(where in e for e in st["errors"]), st
            assert not any(PW in e for e in st["errors"])
        # the pod and its runtime are healthy: a local model still loads and serves
        c.register("local-ok", "sklearn", lr["path"])
        out = c.infer("local-ok", {lr["input"]["name"]: np.asarray(lr["input"]["data"], np.float32)})
        assert out
        assert PW not in cluster.log(0)
