"""MeshMetrics: ModelMesh's names, units and buckets; bounded per-model labels; scrape-time gauges (leader-only
cluster totals)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from mesh.metrics import (
    EXTENSION_NAMES,
    MODELMESH_NAMES,
    MS_TIME_BUCKETS,
    OVERFLOW_LABEL,
    ClusterTotals,
    InstanceStats,
    MeshMetrics,
)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "modelmesh-py.json"


def _text(m: MeshMetrics) -> str:
    return generate_latest(m.registry).decode()


def _families(m: MeshMetrics) -> set[str]:
    return {f.name for f in m.registry.collect()}


def test_exports_modelmesh_names_and_only_documented_extensions():
    m = MeshMetrics()
    m.bind_state(
        instance=lambda: InstanceStats(capacity=1000, used=250, models=2, lru_ms=1_000_000),
        cluster=lambda: ClusterTotals(loaded=3, with_failure=1, managed=5),
        now_ms=lambda: 1_030_000,
    )
    exported = _families(m)  # prometheus_client names counters without the _total it exposes
    assert set(MODELMESH_NAMES) <= exported
    assert exported - set(MODELMESH_NAMES) == set(EXTENSION_NAMES)
    text = _text(m)
    assert "modelmesh_loadmodel_failure_total 0.0" in text
    assert "modelmesh_instance_lru_age_seconds 30.0" in text
    assert "modelmesh_instance_used_bps 2500.0" in text
    assert "modelmesh_models_managed_total 5.0" in text
    assert 'le="300000.0"' in text and MS_TIME_BUCKETS[0] == 0.5


def test_cluster_totals_only_where_the_pod_leads():
    m = MeshMetrics()
    m.bind_state(instance=lambda: None, cluster=lambda: None, now_ms=lambda: 0)
    text = _text(m)
    assert "modelmesh_models_managed_total" not in text
    assert "modelmesh_instance_models_total" not in text


def test_request_metrics_are_in_milliseconds_with_method_and_code():
    m = MeshMetrics()
    m.request("ModelInfer", "OK", 12.5, 300, 40)
    m.request("ModelInfer", "NOT_FOUND", 1.0, 300, -1)
    text = _text(m)
    assert 'modelmesh_api_request_milliseconds_sum{code="OK",method="ModelInfer"} 12.5' in text
    assert 'modelmesh_request_size_bytes_count{code="NOT_FOUND",method="ModelInfer"} 1.0' in text
    assert 'modelmesh_response_size_bytes_count{code="NOT_FOUND",method="ModelInfer"} 0.0' in text


def test_per_model_labels_are_capped_with_an_overflow_value():
    m = MeshMetrics(per_model=True, per_model_cap=2)
    for model in ("a", "b", "c", "d"):
        m.request("ModelInfer", "OK", 1.0, 10, 10, model, "")
        m.observe_model(m.loadmodel_ms, 5.0, model)
    text = _text(m)
    values = set(re.findall(r'modelmesh_api_request_milliseconds_count\{[^}]*modelId="([^"]*)"', text))
    assert values == {"a", "b", OVERFLOW_LABEL}
    assert f'modelmesh_loadmodel_milliseconds_count{{modelId="{OVERFLOW_LABEL}",vModelId=""}} 2.0' in text
    m.request("ModelInfer", "OK", 1.0, 10, 10, "a", "alias")  # a vModel id takes a slot of the same cap
    assert f'modelId="a",vModelId="{OVERFLOW_LABEL}"' in _text(m)


def test_dashboard_uses_only_exported_names():
    doc = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in doc["panels"] for t in p["targets"])
    used = set(re.findall(r"modelmesh_[a-z_]+", exprs))
    known = (
        set(MODELMESH_NAMES)
        | set(EXTENSION_NAMES)
        | {f"{n}_total" for n in EXTENSION_NAMES + MODELMESH_NAMES}
    )
    for name in used:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert base in known or name in known, name
