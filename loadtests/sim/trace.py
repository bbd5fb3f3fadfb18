"""Request traces and model catalogs for the simulator: a seeded generator and a CSV reader/writer.

A **trace** is two arrays sorted by time: ``t_ms`` (int64, milliseconds from the start) and ``model``
(int32, an index into the catalog). A **catalog** gives every registered model an id, a type, a size in
bytes and a load time in milliseconds.

Catalog distributions (heavy-tailed, seeded):
  * size: lognormal, median ``size_median`` (64 MiB), σ ``size_sigma`` (1.5): p1 ≈ 2 MiB, p99 ≈ 2 GiB, mean
    ≈ 3× the median. Model sizes are products of independent factors (layers × width × dtype × vocabulary),
    which is what makes a lognormal; its tail is heavy enough that a few models hold much of the bytes, but
    unlike a Pareto it has a mode, as real collections of fine-tuned variants do. Capped at ``size_cap``.
  * load time: ``overhead + size / bandwidth``. The overhead (runtime start-up of the model, graph
    compilation, warm-up) is lognormal per model type (median 0.2–3 s by type, σ 0.8); the bandwidth
    (storage fetch and deserialisation, bytes/ms) is lognormal (median 100 MB/s, σ 0.7) per model. So load
    time grows with size but the cost of a byte varies by more than 10× between models: small models are
    dominated by their fixed overhead, big ones by their bytes, and two models of one size can differ in
    load time by 5× — which is what a cost-aware policy can exploit and LRU cannot see.

Generator (``TraceSpec``): requests arrive as a Poisson process whose rate follows a diurnal sine
(``diurnal_amplitude``, period ``day_s``); each request picks a model from a Zipf(s) law over the models
active at that moment (a seeded random ranking, so the hottest model is not "m0"); ``rollouts`` times
during the trace an active model retires and a new one (not requested before) appears and takes over its
popularity (a new version replacing an old one); ``bursts`` times a random model outside the top 1,000 gets
``burst_rps`` extra requests for ``burst_s`` seconds (a batch job, a demo). Models never requested still
count as registered.

CSV format (``read_csv``/``write_csv``): one request per line, ``t_ms,model_id[,size_bytes,load_ms]``; an
optional header line starting with ``t_ms``; lines starting with ``#`` are comments. ``t_ms`` is an integer
(milliseconds; only differences matter) and lines may come in any order (they are sorted). A model's size
and load time are taken from the first line of that model that gives them; models without them get values
drawn from the catalog distributions (seeded by the model id, so every run agrees).
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIB = 1 << 20
TYPES = ("sklearn", "xgboost", "onnx", "pytorch", "llm")
# median fixed load overhead per type (ms), and the share of the catalog of each type
TYPE_OVERHEAD_MS = {"sklearn": 200.0, "xgboost": 300.0, "onnx": 800.0, "pytorch": 1_500.0, "llm": 3_000.0}
TYPE_SHARE = (0.3, 0.2, 0.2, 0.2, 0.1)


@dataclass(frozen=True)
class CatalogSpec:
    size_median: int = 64 * MIB
    size_sigma: float = 1.5
    size_cap: int = 4 * 1024 * MIB
    size_floor: int = 64 * 1024
    bandwidth_median: float = 100 * MIB / 1000  # bytes per ms
    bandwidth_sigma: float = 0.7
    overhead_sigma: float = 0.8


@dataclass
class Catalog:
    ids: list[str]
    types: list[str]
    size: np.ndarray  # int64 bytes
    load_ms: np.ndarray  # int64 ms

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        return {m: i for i, m in enumerate(self.ids)}


def _draw(rng: np.random.Generator, n: int, spec: CatalogSpec) -> tuple[list[str], np.ndarray, np.ndarray]:
    types = rng.choice(len(TYPES), size=n, p=TYPE_SHARE)
    size = np.exp(rng.normal(math.log(spec.size_median), spec.size_sigma, n))
    size = np.clip(size, spec.size_floor, spec.size_cap).astype(np.int64)
    overhead_median = np.array([TYPE_OVERHEAD_MS[TYPES[t]] for t in types])
    overhead = overhead_median * np.exp(rng.normal(0.0, spec.overhead_sigma, n))
    bandwidth = spec.bandwidth_median * np.exp(rng.normal(0.0, spec.bandwidth_sigma, n))
    load_ms = np.maximum(1, overhead + size / bandwidth).astype(np.int64)
    return [TYPES[t] for t in types], size, load_ms


def make_catalog(n: int, seed: int, spec: CatalogSpec = CatalogSpec()) -> Catalog:
    rng = np.random.default_rng([seed, 1])
    types, size, load_ms = _draw(rng, n, spec)
    width = max(6, len(str(n - 1)))
    return Catalog([f"m{i:0{width}d}" for i in range(n)], types, size, load_ms)


@dataclass(frozen=True)
class TraceSpec:
    name: str = "zipf"
    models: int = 100_000
    seconds: float = 3_600.0
    rps: float = 40.0
    zipf_s: float = 0.9
    day_s: float = 3_600.0
    diurnal_amplitude: float = 0.5
    rollouts: int = 200
    bursts: int = 6
    burst_rps: float = 5.0
    burst_s: float = 120.0
    initial_share: float = 0.995
    """Share of the catalog active at the start; the rest appears through rollouts."""
    seed: int = 1


@dataclass
class Trace:
    name: str
    t_ms: np.ndarray
    model: np.ndarray
    catalog: Catalog
    seconds: float
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.t_ms)


def generate(spec: TraceSpec, catalog: Catalog | None = None) -> Trace:
    """A trace from ``spec`` (module docstring); deterministic for a given spec."""
    rng = np.random.default_rng([spec.seed, 2])
    catalog = catalog or make_catalog(spec.models, spec.seed)
    n = len(catalog)
    n_initial = max(1, min(n, int(n * spec.initial_share)))
    # rank r (0-based) weight (r+1)^-s; slot k of the ranking holds model holder[k]
    weights = np.arange(1, n_initial + 1, dtype=np.float64) ** -spec.zipf_s
    holder = rng.permutation(n_initial)
    newcomers = list(range(n_initial, n))
    rng.shuffle(newcomers)
    rollouts = min(spec.rollouts, len(newcomers))
    roll_at = np.sort(rng.uniform(0, spec.seconds * 1000, rollouts))
    roll_slot = rng.integers(0, min(n_initial, 2_000), rollouts)  # new versions of popular models
    # arrivals: per-second Poisson counts of the diurnal rate, uniform within the second
    secs = math.ceil(spec.seconds)
    rate = spec.rps * (1 + spec.diurnal_amplitude * np.sin(2 * math.pi * np.arange(secs) / spec.day_s))
    counts = rng.poisson(np.maximum(rate, 0))
    t = (np.repeat(np.arange(secs), counts) * 1000 + rng.integers(0, 1000, counts.sum())).astype(np.int64)
    t.sort()
    # Zipf choice per segment between rollouts (the ranking changes only at a rollout)
    models = np.empty(len(t), dtype=np.int32)
    cum = np.cumsum(weights)
    edges = [*roll_at.tolist(), float("inf")]
    start = 0
    for k, edge in enumerate(edges):
        stop = int(np.searchsorted(t, edge, side="left"))
        if stop > start:
            u = rng.random(stop - start) * cum[-1]
            models[start:stop] = holder[np.searchsorted(cum, u, side="right").clip(0, n_initial - 1)]
        start = stop
        if k < rollouts:
            holder[roll_slot[k]] = newcomers[k]
    # bursts: extra requests for a cold model
    extra_t, extra_m = [], []
    for _ in range(spec.bursts):
        at = rng.uniform(0, max(1.0, spec.seconds - spec.burst_s)) * 1000
        slot = int(rng.integers(min(1_000, n_initial - 1), n_initial)) if n_initial > 1 else 0
        k = rng.poisson(spec.burst_rps * spec.burst_s)
        extra_t.append((at + rng.uniform(0, spec.burst_s * 1000, k)).astype(np.int64))
        extra_m.append(np.full(k, holder[slot], dtype=np.int32))
    if extra_t:
        t = np.concatenate([t, *extra_t])
        models = np.concatenate([models, *extra_m])
        order = np.argsort(t, kind="stable")
        t, models = t[order], models[order]
    return Trace(
        spec.name,
        t,
        models,
        catalog,
        spec.seconds,
        {"spec": spec.__dict__, "distinct_models": len(np.unique(models))},
    )


def _seeded_values(model_id: str, spec: CatalogSpec) -> tuple[str, int, int]:
    seed = int.from_bytes(hashlib.blake2b(model_id.encode(), digest_size=8).digest(), "big")
    types, size, load_ms = _draw(np.random.default_rng(seed), 1, spec)
    return types[0], int(size[0]), int(load_ms[0])


def read_csv(path: str | Path, *, spec: CatalogSpec = CatalogSpec(), name: str | None = None) -> Trace:
    """A trace from the CSV format of the module docstring."""
    rows: list[tuple[int, int]] = []
    index: dict[str, int] = {}
    ids: list[str] = []
    given: dict[int, tuple[int, int]] = {}
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if lineno == 1 and row[0].strip() == "t_ms":
                continue
            if len(row) not in (2, 4):
                raise ValueError(f"{path}:{lineno}: expected t_ms,model_id[,size_bytes,load_ms], got {row}")
            try:
                t = int(row[0])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: t_ms must be an integer, got {row[0]!r}") from None
            model_id = row[1].strip()
            if not model_id:
                raise ValueError(f"{path}:{lineno}: empty model_id")
            i = index.get(model_id)
            if i is None:
                i = index[model_id] = len(ids)
                ids.append(model_id)
            if len(row) == 4 and i not in given:
                try:
                    size, load = int(row[2]), int(row[3])
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: size_bytes and load_ms must be integers") from None
                if size <= 0 or load < 0:
                    raise ValueError(f"{path}:{lineno}: size_bytes must be > 0 and load_ms >= 0")
                given[i] = (size, load)
            rows.append((t, i))
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort(key=lambda r: r[0])  # stable: requests at the same ms keep the file's order
    t_ms = np.array([r[0] for r in rows], dtype=np.int64)
    t_ms -= t_ms[0]
    types, sizes, loads = [], [], []
    for i, model_id in enumerate(ids):
        mtype, size, load = _seeded_values(model_id, spec)
        if i in given:
            size, load = given[i]
        types.append(mtype)
        sizes.append(size)
        loads.append(load)
    catalog = Catalog(ids, types, np.array(sizes, dtype=np.int64), np.array(loads, dtype=np.int64))
    return Trace(
        name or Path(path).stem,
        t_ms,
        np.array([r[1] for r in rows], dtype=np.int32),
        catalog,
        float(t_ms[-1]) / 1000 + 1,
        {"source": str(path), "distinct_models": len(ids)},
    )


def write_csv(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` in the CSV format, with each model's size and load time on its first line."""
    seen: set[int] = set()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_ms", "model_id", "size_bytes", "load_ms"])
        for t, m in zip(trace.t_ms.tolist(), trace.model.tolist(), strict=True):
            if m in seen:
                w.writerow([t, trace.catalog.ids[m]])
            else:
                seen.add(m)
                w.writerow(
                    [t, trace.catalog.ids[m], int(trace.catalog.size[m]), int(trace.catalog.load_ms[m])]
                )
