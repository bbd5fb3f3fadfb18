"""``python -m loadtests.sim``: simulate the mesh on a trace family and compare eviction policies.

Commands:
  run (default)   simulate every trace of the family (or a CSV trace) with each policy, compute the offline
                  lower bound, print the comparison table, write JSON and PNG plots;
  trace           write a generated trace as CSV (the format ``--csv`` reads; see loadtests/sim/trace.py);
  validate        replay one trace through a real local cluster and through the simulator, and compare hit
                  ratio, loads and forwards (loadtests/sim/validate.py).

The simulator runs the project's real policy code (LocalCache, placement, copy-scaling decisions, the
instance-record publication rule, proactive loading) under simulated time; loadtests/sim/engine.py says
exactly what is real and what is modelled.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

from loadtests.common import RESULTS_DIR, machine_info

from .engine import GIB, SimConfig
from .report import plot, print_tables
from .runner import Task, TraceSource, run_all
from .trace import TraceSpec, generate, write_csv

DEFAULT_FAMILY = (0.6, 0.9, 1.1, 1.3)


def _trace_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generated traces")
    g.add_argument("--models", type=int, default=100_000, help="registered models (default 100000)")
    g.add_argument("--seconds", type=float, default=1_200.0, help="measured seconds per trace (default 1200)")
    g.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="unmeasured seconds at the start that fill the caches (default 900 for generated traces, 0 for --csv)",
    )
    g.add_argument("--rps", type=float, default=40.0, help="mean requests per second (default 40)")
    g.add_argument(
        "--zipf", type=float, nargs="+", default=list(DEFAULT_FAMILY), help="Zipf exponents: one trace each"
    )
    g.add_argument("--day-s", type=float, default=None, help="diurnal period, s (default: the trace length)")
    g.add_argument("--diurnal", type=float, default=0.5, help="diurnal amplitude, 0..1 (default 0.5)")
    g.add_argument("--rollouts", type=int, default=200, help="models that retire and are replaced")
    g.add_argument("--bursts", type=int, default=6, help="bursts of requests to a cold model")
    g.add_argument("--seed", type=int, default=1)


def _warmup(args: argparse.Namespace) -> float:
    if args.warmup_s is not None:
        return args.warmup_s
    return 0.0 if getattr(args, "csv", None) else 900.0


def _specs(args: argparse.Namespace) -> list[TraceSpec]:
    return [
        TraceSpec(
            name=f"zipf{s:g}",
            models=args.models,
            seconds=_warmup(args) + args.seconds,
            rps=args.rps,
            zipf_s=s,
            day_s=args.day_s or (_warmup(args) + args.seconds),
            diurnal_amplitude=args.diurnal,
            rollouts=args.rollouts,
            bursts=args.bursts,
            seed=args.seed,
        )
        for s in args.zipf
    ]


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    started = dt.datetime.now(dt.UTC)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    if args.csv:
        sources = [TraceSource(Path(args.csv).stem, csv_path=str(Path(args.csv).resolve()))]
    else:
        sources = [TraceSource(spec.name, spec=spec) for spec in _specs(args)]
    base = SimConfig(
        pods=args.pods,
        capacity=int(args.capacity_gib * GIB),
        loading_concurrency=args.loading_concurrency,
        default_size=args.default_size,
        copy_scaling=not args.no_copy_scaling,
        warmup_s=_warmup(args),
        join_pods=args.join_pods,
        join_at_s=_warmup(args) if args.join_at_s is None else args.join_at_s,
        seed=args.seed,
    )
    tasks: list[Task] = []
    for src in sources:
        if not args.no_bound:
            tasks.append(Task(src, "bound", "bound", config=base, bucket_s=args.bound_bucket_s))
        for policy in args.policies:
            tasks.append(Task(src, "sim", policy, config=_replace(base, policy=policy)))
            if args.proactive:
                tasks.append(
                    Task(
                        src,
                        "sim",
                        f"{policy}+proactive",
                        config=_replace(
                            base, policy=policy, proactive=True, request_loads_first=args.request_loads_first
                        ),
                    )
                )
    print(
        f"{len(sources)} trace(s) x {len(args.policies)} polic(ies){' (+proactive)' if args.proactive else ''}"
        f", {args.pods} pods x {args.capacity_gib:g} GiB, {args.jobs} worker(s) …",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    results = run_all(tasks, args.jobs)
    wall = time.perf_counter() - t0
    print()
    table = print_tables(results)
    sims = [r for r in results if r["kind"] == "sim"]
    print(
        f"\n{len(sims)} simulations + {len(results) - len(sims)} bound(s) in {wall:.1f} s wall "
        f"({args.jobs} worker(s)); simulated {sum(r['trace_seconds'] for r in sims):.0f} s in "
        f"{sum(r['wall_s'] for r in sims):.1f} s of simulator time "
        f"(min {min((r['speedup'] for r in sims), default=0):.0f}x real time per run by wall clock, "
        f"{min((r['speedup_cpu'] for r in sims), default=0):.0f}x by the process's CPU time)"
    )
    command = "python -m loadtests.sim " + shlex.join(argv)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    if not args.no_write:
        out_dir = Path(args.out or RESULTS_DIR)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not args.no_plots:
            plots = plot(results, out_dir / f"sim-{stamp}")
            print("plots: " + ", ".join(str(p) for p in plots))
        slim = [{k: v for k, v in r.items() if k not in ("samples_used",)} for r in results]
        doc = {
            "benchmark": "sim",
            "command": command.strip(),
            "date": started.isoformat(timespec="seconds"),
            "wall_s": round(wall, 1),
            "loadavg_start": loadavg_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "machine": machine_info(),
            "config": base.__dict__,
            "table": table,
            "results": slim,
        }
        path = out_dir / f"sim-{stamp}.json"
        path.write_text(json.dumps(doc, indent=1))
        print(f"wrote {path}")
    return 0


def _replace(cfg: SimConfig, **changes) -> SimConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def cmd_trace(args: argparse.Namespace, argv: list[str]) -> int:
    specs = _specs(args)
    if len(specs) != 1:
        raise SystemExit("trace: give one --zipf value")
    trace = generate(specs[0])
    write_csv(trace, args.out)
    print(
        f"wrote {len(trace)} requests over {trace.seconds:.0f} s ({trace.meta['distinct_models']} models) to {args.out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.sim",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="compare policies on a trace family (the default command)")
    _trace_args(run)
    run.add_argument("--csv", help="replay this CSV trace instead of generating the family")
    run.add_argument("--pods", type=int, default=100)
    run.add_argument(
        "--capacity-gib", type=float, default=32.0, help="cache capacity per pod, GiB (default 32)"
    )
    run.add_argument("--loading-concurrency", type=int, default=2, help="parallel loads per pod (default 2)")
    run.add_argument(
        "--default-size", type=int, default=64 << 20, help="size used to place a never-loaded model"
    )
    run.add_argument("--policies", nargs="+", default=["lru", "cost"], choices=["lru", "cost"])
    run.add_argument("--proactive", action="store_true", help="also run each policy with proactive loading")
    run.add_argument(
        "--request-loads-first",
        action="store_true",
        help="with --proactive: loads that requests wait for go before queued proactive loads (a proposal)",
    )
    run.add_argument("--no-copy-scaling", action="store_true")
    run.add_argument(
        "--join-pods", type=int, default=0, help="of --pods, how many join later (a scale-out; default 0)"
    )
    run.add_argument(
        "--join-at-s", type=float, default=None, help="when they join, s (default: the end of the warm-up)"
    )
    run.add_argument("--no-bound", action="store_true", help="skip the offline lower bound")
    run.add_argument("--bound-bucket-s", type=float, default=60.0, help="time bucket of the bound's LP")
    run.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    run.add_argument("--out", help="results directory (default loadtests/results)")
    run.add_argument("--no-plots", action="store_true")
    run.add_argument("--no-write", action="store_true", help="print only; write no JSON or plots")
    tr = sub.add_parser("trace", help="write a generated trace as CSV")
    _trace_args(tr)
    tr.add_argument("--out", required=True, help="CSV file to write")
    from .validate import add_arguments as add_validate

    add_validate(sub.add_parser("validate", help="simulator vs a real local cluster on one trace"))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "trace":
        return cmd_trace(args, argv)
    if args.command == "validate":
        from .validate import cmd_validate

        return cmd_validate(args, argv)
    return cmd_run(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
