"""Does ``ProcessTreeMeter`` see a model server's GPU memory? (``runtime_adapters.v2_repository``)

The MLServer and Triton adapters size a model by the memory its server's process tree gains while loading it:
resident bytes from psutil and, when a CUDA device is visible and ``nvidia-smi`` exists, the device bytes
``nvidia-smi --query-compute-apps`` lists for the tree's PIDs. This check needs a machine with a GPU and
PyTorch (the device tool's kind): it starts a child process (a stand-in for a model server), has it allocate
``--gib`` GiB on the GPU in steps, and samples the meter on the child's PID after each step.

    python3 -m loadtests.gpu_meter_check [--gib 1 2 4] [--json FILE]

It prints, per step, the bytes the child allocated, what the meter saw and what ``nvidia-smi`` lists in all
(whatever the PIDs), so a PID namespace that hides the child from ``nvidia-smi`` shows as "seen in all, not
in the tree". Exit status 0 when the meter saw every step within 10 % plus the CUDA context, else 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

from runtime_adapters.v2_repository import ProcessTreeMeter

GIB = 1 << 30
CHILD = r"""
import sys, time, torch
held = []
for line in sys.stdin:
    gib = float(line)
    held.append(torch.empty(int(gib * (1 << 30)), dtype=torch.uint8, device="cuda"))
    torch.cuda.synchronize()
    print(torch.cuda.memory_allocated(), flush=True)
"""


def smi_total() -> int | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out = subprocess.run(
        [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return sum(
        int(p.split(",")[1]) << 20 for p in out.splitlines() if "," in p and p.split(",")[1].strip().isdigit()
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="allocation steps, GiB")
    p.add_argument("--json", default="", help="also write the rows here")
    args = p.parse_args(argv)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    meter = ProcessTreeMeter(lambda: child.pid, gpu=True)
    rows = []
    ok = meter.measures_device
    try:
        base = meter.sample()
        print(f"nvidia-smi: {shutil.which('nvidia-smi')}; before: {base}")
        for gib in args.gib:
            child.stdin.write(f"{gib}\n")
            child.stdin.flush()
            allocated = int(child.stdout.readline())
            time.sleep(0.5)
            sample = meter.sample()
            row = {
                "step_gib": gib,
                "torch_allocated": allocated,
                "meter_device": sample.device if sample else None,
                "meter_rss": sample.rss if sample else None,
                "smi_all_processes": smi_total(),
            }
            rows.append(row)
            print(json.dumps(row))
            seen = row["meter_device"]
            # the CUDA context adds a few hundred MiB on top of the tensors
            if seen is None or not allocated * 0.9 <= seen <= allocated * 1.1 + GIB:
                ok = False
    finally:
        child.kill()
        child.wait()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "meter_saw_every_step": ok}, f, indent=1)
    print("meter saw every step" if ok else "meter did NOT see the device memory (see rows)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
