"""Print the figures of the last multi-host run (``var/multihost/*.json``) as the markdown tables of
docs/benchmarks.md: ``python -m tests.multihost.report``.

One row per scenario and fault: how long the cluster took to notice and to recover (lease end, re-placement,
rejoin), the client requests by status during the fault, split by class of model, and how many pods named
themselves leader at once (from the sampler: at most one is correct).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.multihost.common import RESULTS_DIR

RECONCILE_NOTE = "at the end of the bound"


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _codes(summary: dict | None) -> str:
    if not summary or not summary.get("requests"):
        return "-"
    codes = summary["by_code"]
    failed = summary["requests"] - codes.get("OK", 0)
    others = ", ".join(f"{c} {n}" for c, n in sorted(codes.items()) if c != "OK")
    return f"{failed} of {summary['requests']}" + (f" ({others})" if others else "")


def _s(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _leaders(data: dict) -> str:
    leaders = data.get("leaders")
    if not leaders:
        return "-"
    most = leaders["max_self_declared_leaders"]
    if most <= 1:
        return f"max {most}"
    if "two_leaders_s" in leaders:
        return f"max {most} ({leaders['two_leaders_s']:.1f} s with two)"
    return f"max {most} ({leaders['samples_with_two_or_more']} samples with two)"


def rows() -> list[list[str]]:
    out: list[list[str]] = []
    d = _load("routing")
    if d:
        out.append([
            "routing", f"SIGKILL of {d['victim']} (held {len(d['victim_models'])} models)",
            f"lease ended {_s(d['lease_gone_s'])}; models re-placed {_s(d['replaced_s'])}; records reaped "
            f"{_s(d['reaped_s'])}",
            f"all models: {_codes(d['traffic'])}", "-",
        ])  # fmt: skip
    d = _load("etcd_partition")
    if d:
        fresh = ", ".join(o["code"] for o in d["fresh_through_cut_pod"])
        over = len(d["over_policy_after_heal"])
        out.append([
            "etcd_partition", f"leader {d['cut_pod']} cut from etcd for {_s(d['cut_s'])} s",
            f"lease ended {_s(d['lease_gone_s'])}; new leader {_s(d['new_leader_s'])}; models re-placed "
            f"{_s(d['replaced_s'])}; rejoined {_s(d['rejoined_s'])} after heal; "
            + (f"copies within maxCopies {_s(d['reconciled_s'])} after heal" if d["reconciled_s"] is not None
               else f"{over} models above maxCopies {RECONCILE_NOTE}"),
            f"all: {_codes(d['traffic_during_cut'])}; cut pod's own models via it: "
            f"{_codes(d['cut_pod_own_models_during_cut'])}; new model via it: {fresh}",
            _leaders(d),
        ])  # fmt: skip
    d = _load("pod_partition")
    if d:
        out.append([
            "pod_partition", f"pod-0 and pod-1 cut for {_s(d['cut_s'])} s (client deadline {d['deadline_s']:.0f} s)",
            f"failures from {_s(d['first_failure_s'])} to {_s(d['last_failure_s'])} s after the cut",
            f"two copies: {_codes(d['pairs_during_cut'])}; one copy: {_codes(d['singles_during_cut'])}", "-",
        ])  # fmt: skip
    d = _load("rolling_restart")
    if d:
        steps = "; ".join(f"{r['pod']} exit {_s(r['exit_s'])}, back {_s(r['back_s'])}" for r in d["restarts"])
        migrated = sum(len(r["migrated"]) for r in d["restarts"])
        held = sum(len(r["held_hot"]) for r in d["restarts"])
        out.append([
            "rolling_restart", "SIGTERM each pod in turn, restart", f"{steps}; hot models migrated {migrated}/{held}",
            f"two copies: {_codes(d['pairs'])}; one copy (hot): {_codes(d['hot'])}", "-",
        ])  # fmt: skip
    d = _load("etcd_members")
    if d:
        back = d["management_back_s"]
        back_text = ", ".join(f"{p} {_s(v) if v is not None else 'never'}" for p, v in back.items())
        out.append([
            "etcd_members", f"member A killed; then L killed: no quorum for {_s(d['quorum_loss_s'])} s",
            f"followed in {_s(d['follow_s'])}; management back after quorum: {back_text}",
            f"one member lost: {_codes(d['traffic_phase1'])}; no quorum: {_codes(d['traffic_without_quorum'])}; "
            f"after: {_codes(d['traffic_after'])}",
            _leaders(d),
        ])  # fmt: skip
    d = _load("etcd_outage")
    if d:
        over = len(d["over_policy_after"])
        out.append([
            "etcd_outage", "every pod cut from etcd for 20 s, pod-0 healed first",
            f"leases ended {_s(d['leases_gone_s'])}; all back {_s(d['all_back_s'])} after heal; "
            + (f"copies within maxCopies {_s(d['reconciled_s'])}" if d["reconciled_s"] is not None
               else f"{over} models above maxCopies {RECONCILE_NOTE}")
            + "; killed pod reaped "
            + (f"{_s(d['reaped_s'])}" if d["reaped_s"] is not None else f"never (still in {len(d['still_listed_in'])} records)"),
            f"outage: {_codes(d['traffic_during_outage'])}; after: {_codes(d['traffic_after'])}",
            _leaders(d),
        ])  # fmt: skip
    return out


def main() -> int:
    table = rows()
    if not table:
        print(f"no results in {RESULTS_DIR}: run `make test-multihost` first", file=sys.stderr)
        return 1
    print(
        "| scenario | fault | recovery (s after the fault, unless said) | client requests failed | leaders at once |"
    )
    print("|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    loads = {
        p.stem: json.loads(p.read_text()).get("load_avg_1m") for p in sorted(Path(RESULTS_DIR).glob("*.json"))
    }
    print()
    print(
        "1-minute load average at the end of each scenario: "
        + ", ".join(f"{k} {v:.2f}" for k, v in loads.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
