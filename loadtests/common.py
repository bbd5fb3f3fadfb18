"""Shared pieces of the load tests: a closed-loop grpc.aio driver, latency statistics, CPU sampling, output.

Owns how we measure, so every benchmark measures the same way: requests are pre-serialised once and sent as
raw bytes (no protobuf work in the client loop), each of ``concurrency`` coroutines keeps exactly one request
in flight on one shared channel, a warm-up phase is discarded, and CPU is the psutil ``cpu_times`` delta
(user + system) of the processes under test across the measured phase only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import httptools
import psutil

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class RunResult:
    requests: int
    errors: int
    seconds: float
    latencies_s: list[float]
    cpu_s: dict[str, float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = float("nan")
    return out


async def _worker(call, payload: bytes, metadata, stop_at: float, lat: list[float], errs: list[int]) -> None:
    while True:
        t0 = time.perf_counter()
        if t0 >= stop_at:
            return
        try:
            await call(payload, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError:
            errs[0] += 1
            continue
        lat.append(time.perf_counter() - t0)


async def closed_loop(
    target: str,
    payload: bytes,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    concurrency: int = 1,
    seconds: float = 8.0,
    warmup: float = 1.0,
    cpu_pids: dict[str, int] | None = None,
    method: str = MODEL_INFER,
) -> RunResult:
    """Drive ``method`` at ``target`` with ``concurrency`` outstanding requests; warm up, then measure."""
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        md = tuple(metadata)
        await call(payload, metadata=md, timeout=30)  # connect + fail fast if the target is wrong
        scratch: list[float] = []
        errs = [0]
        stop = time.perf_counter() + warmup
        await asyncio.gather(*(_worker(call, payload, md, stop, scratch, errs) for _ in range(concurrency)))
        lat: list[float] = []
        errs = [0]
        before = cpu_seconds(cpu_pids or {})
        t0 = time.perf_counter()
        await asyncio.gather(
            *(_worker(call, payload, md, t0 + seconds, lat, errs) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - t0
        after = cpu_seconds(cpu_pids or {})
    return RunResult(
        requests=len(lat),
        errors=errs[0],
        seconds=elapsed,
        latencies_s=lat,
        cpu_s={k: after[k] - before[k] for k in before},
    )


def summarize(name: str, r: RunResult, **extra: Any) -> dict[str, Any]:
    row = {
        "scenario": name,
        "requests": r.requests,
        "errors": r.errors,
        "seconds": round(r.seconds, 3),
        "throughput_rps": round(r.throughput, 1),
        "p50_ms": round(percentile(r.latencies_s, 50) * 1e3, 3),
        "p99_ms": round(percentile(r.latencies_s, 99) * 1e3, 3),
    }
    for proc, cpu in r.cpu_s.items():
        row[f"{proc}_cpu_us_per_req"] = round(cpu / r.requests * 1e6, 1) if r.requests else None
    row.update(extra)
    return row


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": psutil.cpu_count(logical=True),
        "grpcio": grpc.__version__,
    }


def write_results(name: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def as_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)


class HttpKeepAlive(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection for the REST benchmarks: ``exchange`` writes a whole request
    and returns the response's status once httptools has parsed it (one request in flight at a time)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> HttpKeepAlive:
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, port)
        return conn

    async def exchange(self, request: bytes) -> int:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.parser.get_status_code())
