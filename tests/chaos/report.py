"""The chaos figures as a markdown table (docs/benchmarks.md "Chaos"): ``python -m tests.chaos.report``.

Reads ``var/chaos/<scenario>.json`` as the last ``make test-chaos`` wrote them; prints one row per scenario
(requests by outcome, time to recover, what else was measured) and the load average each run ended under.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.chaos.harness import FIGURES_DIR

ORDER = ("pods_sigkill_restart", "runtime_sigkill", "etcd_outage", "slow_and_hung", "full_disk")


def _outcomes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (kv[0] != "OK", kv[0])))


def _rounds(rounds: list[dict], key: str) -> str:
    return " / ".join(f"{r[key]:.1f}" for r in rounds if r.get(key) is not None) + " s"


def row(d: dict) -> tuple[str, str, str, str]:
    name = d["scenario"]
    if name == "pods_sigkill_restart":
        return (
            f"{len(d['rounds'])} pods SIGKILLed + restarted ({', '.join(r['kind'] for r in d['rounds'])}), "
            f"{d['pods']} pods, {d['two_copy_models']}/{d['models']} models with 2 copies",
            f"{_outcomes(d['requests'])} (2-copy models: {_outcomes(d['requests_two_copy'])})",
            f"restarted pod SERVING {_rounds(d['rounds'], 'restarted_serving_s')} after the kill; "
            f"converged {_rounds(d['rounds'], 'converged_after_restart_s')} after that",
            f"latency p50/p99/max {d['latency_ms']['p50']}/{d['latency_ms']['p99']}/{d['latency_ms']['max']} ms",
        )
    if name == "runtime_sigkill":
        return (
            f"runtime SIGKILLed on each of 2 pods, {d['two_copy_models']}/{d['models']} models with 2 copies",
            _outcomes(d["requests"]),
            f"readiness lost {_rounds(d['rounds'], 'readiness_lost_s')}, back {_rounds(d['rounds'], 'readiness_back_s')}, "
            f"converged {_rounds(d['rounds'], 'converged_s')} after the kill",
            f"failed background tasks per pod {d['failed_background_tasks']}; latency max {d['latency_ms']['max']} ms",
        )
    if name == "etcd_outage":
        return (
            f"etcd stopped {d['outage_s']} s, 2 pods, 2 Zipf loads (the 2nd shifts popularity at the outage)",
            f"{_outcomes(d['requests'])} (during the outage: {_outcomes(d['requests_during_outage'])})",
            f"registration back {d['registration_back_s']} s, converged {d['converged_after_restart_s']} s after restart",
            f"management during the outage: {_outcomes(d['management_during_outage'])}; "
            f"cold model: {', '.join(d['cold_model_during_outage'])} meanwhile, {d['cold_model_after']} after; "
            f"copy loads started without etcd: {d['copy_loads_started_during_outage']}",
        )
    if name == "slow_and_hung":
        return (
            f"{d['slow_models']} models on a dribbling/hung storage (load timeout {d['load_timeout_ms']} ms, "
            f"deadline {d['request_deadline_s']} s), then the runtime SIGSTOPped {d['stopped_s']} s",
            f"slow-model requests: {_outcomes(d['slow_requests'])} (longest {d['slow_request_longest_s']} s); "
            f"others during slow loads: {_outcomes(d['requests_during_slow_loads'])}; while stopped: "
            f"{_outcomes(d['requests_while_runtime_stopped'])} (models on the other pod: "
            f"{_outcomes(d['requests_while_stopped_for_models_only_on_other_pod'])})",
            f"partial downloads gone {d['leftovers_gone_after_failure_s']} s after the failures; "
            f"converged {d['converged_after_sigcont_s']} s after SIGCONT",
            f"errors: {'; '.join(d['slow_load_errors'])}; healthy model from the same storage: "
            f"{d['healthy_web_model'][0]}; longest failed request while stopped {d['longest_failed_request_s']} s",
        )
    if name == "full_disk":
        return (
            f"{d['model_bytes'] >> 10} KiB model pulled into a {d['disk_bytes'] >> 10} KiB model directory",
            _outcomes(d["requests"]),
            f"LOADING_FAILED after {d['failed_after_s']} s; model dir after: {d['model_dir_after_failure'] or 'empty'}",
            f"status: {'; '.join(d['status']['errors'])}; small remote model after: {d['small_remote_model_after']}",
        )
    raise ValueError(name)


def main(directory: Path = FIGURES_DIR) -> int:
    docs = {p.stem: json.loads(p.read_text()) for p in directory.glob("*.json")}
    print("| scenario | requests by outcome | time to recover | also measured |")
    print("|---|---|---|---|")
    for name in ORDER:
        if name in docs:
            print("| " + " | ".join(row(docs[name])) + " |")
    print()
    for name in ORDER:
        if name in docs:
            d = docs[name]
            failed = f", FAILED: {d['failed']}" if "failed" in d else ""
            print(f"- {name}: {d['when']}, load average at the end {d['load_average_at_end']}{failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
