"""Pull throughput: our Puller vs a plain boto3 ``download_file`` of the same object, same moto server.

Starts ``moto_server`` as a subprocess on a free loopback port (tests/support/s3.py), uploads one random
object (single part, so the Puller also verifies its MD5), then alternates the two downloads ``--runs``
times, deleting the result between runs, and prints MB/s (1 MB = 10^6 bytes) per run, the medians and
the ratio Puller / boto3. Usage:

    .venv/bin/python -m loadtests.pull_throughput --size-mb 100 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from puller import Puller, PullerSettings
from tests.support.s3 import MotoServer


def make_object(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--client", choices=["boto3", "minio"], default="boto3", help="Puller's S3 client")
    args = ap.parse_args()
    size = args.size_mb * 1_000_000
    work = Path(tempfile.mkdtemp(prefix="pull-bench-"))
    server = MotoServer().start()
    try:
        client = server.client()
        bucket = server.new_bucket(client)
        src = work / "src.bin"
        make_object(src, size)
        client.upload_file(
            str(src), bucket, "bench/model.bin", Config=TransferConfig(multipart_threshold=size * 2)
        )
        src.unlink()
        cfg = work / "storage.json"
        entry = server.entry(bucket=bucket, client=args.client)
        cfg.write_text(__import__("json").dumps({"bench": entry}))
        puller = Puller(PullerSettings(model_dir=work / "models", storage_config=cfg))
        ours, plain = [], []
        try:
            for i in range(args.runs):
                t0 = time.perf_counter()
                art = await puller.pull("bench", "bench/model.bin", '{"storage_key":"bench"}')
                ours.append(size / (time.perf_counter() - t0) / 1e6)
                assert art.disk_size_bytes == size
                await puller.remove("bench")

                dest = work / "plain.bin"
                t0 = time.perf_counter()
                await asyncio.to_thread(client.download_file, bucket, "bench/model.bin", str(dest))
                plain.append(size / (time.perf_counter() - t0) / 1e6)
                assert dest.stat().st_size == size
                dest.unlink()
                print(
                    f"run {i + 1}: puller {ours[-1]:.0f} MB/s, boto3 download_file {plain[-1]:.0f} MB/s",
                    flush=True,
                )
        finally:
            await puller.close()
        mo, mp = statistics.median(ours), statistics.median(plain)
        print(f"object {args.size_mb} MB, {args.runs} runs, puller client {args.client}")
        print(f"median: puller {mo:.0f} MB/s, boto3 download_file {mp:.0f} MB/s, ratio {mo / mp:.2f}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
