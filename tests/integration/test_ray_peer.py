"""The Ray side of the peer comparison against a real private Ray instance (slow; needs ``make ray-venv``).

Starts ``loadtests.ray_serve.host`` with the Ray venv, deploys the multiplexed V2 application over real sample
models with room for one model per replica, and checks through Ray's real gRPC proxy: the outputs are the
manifest's expected ones, a first request and a request after an eviction report their load in trailing
metadata while a repeat does not, an unknown model is NOT_FOUND from the deployment, the benchmark's own
closed loop runs without errors, and stopping leaves no process of that Ray session behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil

import grpc
import pytest

from loadtests import cluster_zipf as cz
from loadtests.common import MODEL_INFER
from loadtests.ray_serve import APP_NAME, LOAD_MS_KEY, MODEL_ID_METADATA
from loadtests.ray_serve.control import RayHost
from loadtests.ray_serve.driver import measure_ray, wait_routable
from mesh.devtools.cluster import REPO_ROOT, free_port
from mesh.devtools.demo import ensure_samples

RAY_PYTHON = REPO_ROOT / ".venv-ray" / "bin" / "python"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),  # hang guard only (a private Ray instance starts first), over the default 180 s
    pytest.mark.skipif(not RAY_PYTHON.exists(), reason="no .venv-ray: run `make ray-venv`"),
]


@pytest.fixture
def ray_host(tmp_path):
    temp_dir = REPO_ROOT / "var" / f"ray-t{os.getpid()}"  # short: Ray's unix socket paths live under it
    host = RayHost(
        RAY_PYTHON,
        REPO_ROOT,
        temp_dir,
        grpc_port=free_port(),
        http_port=free_port(),
        log_path=tmp_path / "ray-host.log",
    )
    host.start()
    try:
        yield host
    finally:
        host.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


async def _infer(address: str, model: cz.ModelSpec) -> tuple[bytes, dict[str, str]]:
    async with grpc.aio.insecure_channel(address) as ch:
        rpc = ch.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        call = rpc(
            model.payload, metadata=(("application", APP_NAME), (MODEL_ID_METADATA, model.id)), timeout=30
        )
        response = await call
        return response, {k: str(v) for k, v in await call.trailing_metadata()}


async def _unknown(address: str, payload: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as ch:
        rpc = ch.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rpc(
                payload, metadata=(("application", APP_NAME), (MODEL_ID_METADATA, "no-such")), timeout=30
            )
        return info.value


def test_ray_multiplexed_v2_app_serves_evicts_reports_loads_and_cleans_up(ray_host, tmp_path) -> None:
    models_dir = tmp_path / "models"
    models = cz.load_models(models_dir, 3)
    by_id = {m["id"]: m for m in ensure_samples(models_dir, many=3)["models"]}
    files = {m.id: str(models_dir / by_id[m.id]["file"]) for m in models}
    ray_host.deploy(files, replicas=1, max_models=1, max_ongoing=8)
    asyncio.run(wait_routable(ray_host.address))
    a, b = models[0], models[1]

    sequence = [(a, True), (a, False), (b, True), (a, True)]  # room for one model: b evicts a
    for model, loads in sequence:
        response, trailers = asyncio.run(_infer(ray_host.address, model))
        assert cz.outputs_match(response, model.expected), model.id
        assert (LOAD_MS_KEY in trailers) is loads, (model.id, trailers)
    err = asyncio.run(_unknown(ray_host.address, a.payload))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "no-such" in err.details()

    ns = argparse.Namespace(
        zipf_s=1.1, seed=1, timeout=30.0, verify_every=2, warmup=0.5, seconds=1.5, concurrency=4
    )
    raw = asyncio.run(measure_ray(ray_host, models, ns))
    tally: cz.Tally = raw["tally"]
    assert not tally.errors, tally.error_examples
    assert tally.verified > 0
    assert tally.latencies["miss"] and len(raw["load_ms"]) == len(tally.latencies["miss"])

    assert ray_host.session_processes()  # Ray's daemons and actors run in the host's session
    killed = ray_host.stop()
    assert killed == [], killed  # serve.shutdown + ray.shutdown ended everything by themselves
    assert ray_host.session_processes() == []
