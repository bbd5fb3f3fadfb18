"""Tables and plots of simulator results (markdown to stdout, PNG files with matplotlib's Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from loadtests.common import markdown_table


def _fmt(v: float, digits: int = 3) -> float:
    return round(float(v), digits)


def comparison_rows(results: list[dict]) -> list[dict]:
    """One row per (trace, policy) plus the bound, with load time relative to LRU and to the bound."""
    by_trace: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in results:
        by_trace[r["trace"]][r["label"]] = r
    rows = []
    for trace, runs in by_trace.items():
        bound = runs.get("bound")
        lru = runs.get("lru")
        for label, r in runs.items():
            if label == "bound":
                continue
            rows.append(
                {
                    "trace": trace,
                    "policy": label,
                    "requests": r["requests"],
                    "hit_ratio": _fmt(r["hit_ratio"]),
                    "waited": r["waited"],
                    "wait_p50_s": _fmt(r["wait_p50_ms"] / 1000, 2),
                    "wait_p99_s": _fmt(r["wait_p99_ms"] / 1000, 2),
                    "loads": r["loads"],
                    "load_time_s": round(r["load_s"]),
                    "vs_lru": _fmt(r["load_s"] / lru["load_s"]) if lru and lru["load_s"] else "",
                    "vs_bound": _fmt(r["load_s"] / bound["load_s"]) if bound and bound["load_s"] else "",
                    "above_compulsory_s": round(r["load_s"] - r["compulsory_s"]),
                    "forwards": r["forwards"],
                    "etcd_writes": r["etcd_writes"],
                    "sim_wall_s": _fmt(r["wall_s"], 1),
                    "x_real_time": round(r["speedup"]),
                    "x_real_time_cpu": round(r.get("speedup_cpu", 0.0)),
                }
            )
        if bound:
            rows.append(
                {
                    "trace": trace,
                    "policy": "lower bound",
                    "requests": bound["requests"],
                    "loads": "",
                    "load_time_s": round(bound["load_s"]),
                    "vs_lru": _fmt(bound["load_s"] / lru["load_s"]) if lru and lru["load_s"] else "",
                    "vs_bound": 1.0,
                    "above_compulsory_s": round(bound["capacity_s"]),
                    "sim_wall_s": _fmt(bound["wall_s"], 1),
                }
            )
    return rows


TABLE_COLUMNS = [
    "trace",
    "policy",
    "requests",
    "hit_ratio",
    "waited",
    "wait_p50_s",
    "wait_p99_s",
    "loads",
    "load_time_s",
    "vs_lru",
    "vs_bound",
    "above_compulsory_s",
    "forwards",
    "etcd_writes",
    "sim_wall_s",
    "x_real_time",
    "x_real_time_cpu",
]


def print_tables(results: list[dict]) -> str:
    text = markdown_table(comparison_rows(results), TABLE_COLUMNS)
    print(text)
    return text


def plot(results: list[dict], out_dir: Path) -> list[Path]:
    """Per trace: requests and loads per minute, load time per minute, requests that waited per minute, and
    per-pod memory use over time (median and min–max band across pods), one line per policy. Plus one
    summary chart of load time relative to LRU and to the bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    by_trace: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r["kind"] == "sim":
            by_trace[r["trace"]].append(r)
    for trace, runs in by_trace.items():
        fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
        for r in runs:
            pm = r["per_minute"]
            x = np.arange(len(pm["requests"]))
            axes[0][0].plot(x, pm["loads"], label=f"{r['label']} loads")
            axes[0][1].plot(x, np.array(pm["load_ms"]) / 1000, label=r["label"])
            axes[1][0].plot(x, pm["waited"], label=r["label"])
            used = np.array(r["samples_used"], dtype=np.float64) / r["capacity"]
            t = np.array(r["samples_t"]) / 60
            line = axes[1][1].plot(t, np.median(used, axis=1), label=f"{r['label']} median pod")
            axes[1][1].fill_between(
                t, used.min(axis=1), used.max(axis=1), alpha=0.15, color=line[0].get_color()
            )
        x = np.arange(len(runs[0]["per_minute"]["requests"]))
        axes[0][0].plot(x, runs[0]["per_minute"]["requests"], color="grey", lw=0.8, label="requests")
        axes[0][0].set_title("requests and loads per minute")
        axes[0][1].set_title("load time spent per minute (s)")
        axes[1][0].set_title("requests that waited for a load, per minute")
        axes[1][1].set_title("pod memory used / capacity (median, min-max)")
        warm = runs[0].get("warmup_s", 0) / 60
        for ax in axes.flat:
            if warm:
                ax.axvline(warm, color="black", lw=0.8, ls=":")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set_xlabel("minute")
        fig.suptitle(
            f"trace {trace}: {runs[0]['requests']} measured requests after a {runs[0].get('warmup_s', 0):.0f} s "
            f"warm-up (dotted line), {runs[0]['pods']} pods"
        )
        fig.tight_layout()
        path = out_dir / f"{trace}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    rows = [r for r in comparison_rows(results) if r.get("vs_lru") != ""]
    if rows:
        traces = list(dict.fromkeys(r["trace"] for r in rows))
        labels = list(dict.fromkeys(r["policy"] for r in rows))
        fig, ax = plt.subplots(figsize=(10, 4))
        width = 0.8 / max(1, len(labels))
        for k, label in enumerate(labels):
            vals = [
                next((r["vs_lru"] for r in rows if r["trace"] == t and r["policy"] == label), 0)
                for t in traces
            ]
            ax.bar(np.arange(len(traces)) + k * width, vals, width, label=label)
        ax.axhline(0.7, color="red", lw=0.8, ls="--", label="goal 0.7 x LRU")
        ax.set_xticks(np.arange(len(traces)) + width * (len(labels) - 1) / 2, traces)
        ax.set_ylabel("total load time / LRU's")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        path = out_dir / "load_time_vs_lru.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
