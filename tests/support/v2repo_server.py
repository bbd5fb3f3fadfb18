"""A small V2 repository-API server standing in for Triton in tests (no Triton binary installs here).

It speaks ``inference.GRPCInferenceService`` (our protos, grpc.aio) the way Triton does in explicit
model-control mode, as far as the Triton adapter relies on it:

- RepositoryModelLoad(name) checks the layout on disk first: ``<repo>/<name>/config.pbtxt`` and a numbered
  version folder holding ``model.<ext>`` whose (symlink) target exists; a bad layout fails INTERNAL
  ("failed to load '<name>' ..."), like Triton. ``model.onnx`` is served with onnxruntime; anything else
  is an echo model (outputs = inputs). ``--load-delay`` makes every load slow (hung-load tests).
- RepositoryModelUnload of an unknown model succeeds (Triton's behaviour); RepositoryIndex lists every
  model seen, ``READY`` or ``UNAVAILABLE``.
- ModelInfer/ModelMetadata on a model that is not loaded: UNAVAILABLE "Request for unknown model: '<name>'
  is not found" (Triton's wording, which the mesh must read as "not here"); ModelReady -> ready=false.

Every repository call is appended as one JSON line to ``--calls`` (rpc, name, ok, files seen at load).
Run: ``python -m tests.support.v2repo_server --port P --repo DIR --calls FILE``; it prints ``READY <port>``.
``V2RepoServerProcess`` starts it as a subprocess and stops it by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pbg
from runtime_adapters.builtin.tensors import decode_inputs, encode_outputs

REPO_ROOT = Path(__file__).resolve().parents[2]


class _Model:
    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.files = sorted(
            os.path.relpath(os.path.join(root, f), folder)
            for root, _dirs, files in os.walk(folder, followlinks=True)  # version folders may be symlinks
            for f in files
        )
        self.session = None
        onnx = sorted(folder.glob("[0-9]*/model.onnx"))
        self._onnx = onnx[-1].resolve() if onnx else None  # symlinks resolved now: the folder may go

    def open(self) -> None:
        if self._onnx is not None:
            import onnxruntime

            self.session = onnxruntime.InferenceSession(str(self._onnx), providers=["CPUExecutionProvider"])

    def predict(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.session is None:
            return {f"echo-{k}": v for k, v in inputs.items()}
        names = [i.name for i in self.session.get_inputs()]
        feed = dict(zip(names, inputs.values(), strict=False))
        outs = self.session.run(None, feed)
        return {o.name: v for o, v in zip(self.session.get_outputs(), outs, strict=True)}


class V2RepoServicer(pbg.GRPCInferenceServiceServicer):
    def __init__(self, repo: Path, calls: Path | None, load_delay_s: float = 0.0) -> None:
        self.repo = repo
        self.calls = calls
        self.load_delay_s = load_delay_s
        self.loaded: dict[str, _Model] = {}
        self.seen: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    def _record(self, **entry: Any) -> None:
        if self.calls is not None:
            with self.calls.open("a") as f:
                f.write(json.dumps({"t": time.time(), **entry}) + "\n")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="v2repo-test", version="1")

    def _check_layout(self, name: str) -> Path:
        folder = self.repo / name
        if not (folder / "config.pbtxt").is_file():
            raise LookupError(
                f"failed to load '{name}', failed to poll from model repository: no config.pbtxt"
            )
        versions = [v for v in folder.iterdir() if v.is_dir() and v.name.isdigit()]
        if not versions or not any(
            f.name.startswith("model.") and f.exists() for v in versions for f in v.iterdir()
        ):
            raise LookupError(f"failed to load '{name}': no version folder with a model file")
        return folder

    async def RepositoryModelLoad(self, request, context):
        name = request.model_name
        self.seen.add(name)
        # Like Triton, the load runs to its end even when the client gives up (cancels the RPC).
        task = asyncio.create_task(self._load(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        error = await asyncio.shield(task)
        if error:
            await context.abort(grpc.StatusCode.INTERNAL, error)
        return pb.RepositoryModelLoadResponse()

    async def _load(self, name: str) -> str:
        """Load ``name``; returns an error message or "". The layout is read first, then the delay."""
        try:
            folder = self._check_layout(name)
            model = _Model(name, folder)
            config = (folder / "config.pbtxt").read_text()
            if self.load_delay_s:
                await asyncio.sleep(self.load_delay_s)
            await asyncio.to_thread(model.open)
        except Exception as exc:  # reported to the client, as Triton does
            self._record(rpc="load", name=name, ok=False, error=str(exc))
            return str(exc)
        self.loaded[name] = model
        self._record(rpc="load", name=name, ok=True, files=model.files, config=config)
        return ""

    async def RepositoryModelUnload(self, request, context):
        was = self.loaded.pop(request.model_name, None) is not None
        self._record(rpc="unload", name=request.model_name, ok=True, was_loaded=was)
        return pb.RepositoryModelUnloadResponse()

    async def RepositoryIndex(self, request, context):
        resp = pb.RepositoryIndexResponse()
        for name in sorted(self.seen):
            ready = name in self.loaded
            resp.models.add(name=name, version="1", state="READY" if ready else "UNAVAILABLE",
                            reason="" if ready else "unloaded")  # fmt: skip
        return resp

    async def _model(self, name: str, context) -> _Model:
        model = self.loaded.get(name)
        if model is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"Request for unknown model: '{name}' is not found"
            )
        return model

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name in self.loaded)

    async def ModelMetadata(self, request, context):
        await self._model(request.name, context)
        return pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="test")

    async def ModelInfer(self, request, context):
        model = await self._model(request.model_name, context)
        inputs, raw = decode_inputs(request)
        outputs = await asyncio.to_thread(model.predict, inputs)
        resp = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        return encode_outputs(resp, outputs, raw=raw)


async def _serve(port: int, repo: Path, calls: Path | None, load_delay_s: float) -> None:
    server = grpc.aio.server()
    pbg.add_GRPCInferenceServiceServicer_to_server(V2RepoServicer(repo, calls, load_delay_s), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


class V2RepoServerProcess:
    """The server as a subprocess on ``port`` (0 = free), stopped by PID."""

    def __init__(self, repo: Path, calls: Path, *, port: int = 0, load_delay_s: float = 0.0) -> None:
        self.repo, self.calls, self.load_delay_s = repo, calls, load_delay_s
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.repo.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tests.support.v2repo_server", "--port", str(self.port), "--repo",
               str(self.repo), "--calls", str(self.calls), "--load-delay", str(self.load_delay_s)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"v2repo server did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self.proc.stdout.close()  # type: ignore[union-attr]

    def recorded(self) -> list[dict]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines() if line.strip()]

    def __enter__(self) -> V2RepoServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.support.v2repo_server", description=__doc__.splitlines()[0]
    )
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--calls", type=Path, default=None)
    p.add_argument("--load-delay", type=float, default=0.0)
    args = p.parse_args(argv)
    asyncio.run(_serve(args.port, args.repo, args.calls, args.load_delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
