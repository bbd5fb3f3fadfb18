"""An offline lower bound on the load time any placement/eviction policy must spend on a trace.

Definition. Let the whole cluster be one cache of capacity C = Σ pod capacities. Any run of the mesh, seen
only as "is at least one copy of model i loaded somewhere", is a schedule of that one cache: extra copies
and per-pod packing only cost more, so relaxing them away keeps a lower bound. In that schedule:

  * every model requested at least once is loaded at least once (the cache starts empty): that is the
    **compulsory** load time Σ load_ms(i) over requested models;
  * between two consecutive requests of model i (an *interval* I = (t_a, t_b)), either a copy stays loaded
    for the whole interval, holding size(i) bytes throughout, or the model is loaded again, costing load_ms(i).

So OPT = compulsory + min Σ_I load_ms(I)·(1 − x_I) over x_I ∈ {0, 1} (1 = kept) such that at every instant
the kept intervals hold at most C bytes. We relax two things, each of which can only lower the minimum:
x_I may be fractional (the LP relaxation of this interval-packing problem), and the capacity constraint
holds on average over each bucket of ``bucket_s`` seconds instead of at every instant (Σ_I size(I)·
overlap(I, bucket)·x_I ≤ C·bucket length). The result is a linear program with one variable per interval
and one constraint per bucket, solved exactly with HiGHS (scipy). Its optimum is a true lower bound:

    bound = compulsory + LP optimum ≤ OPT ≤ the load time of any policy.

Why not size-aware Belady: Belady's rule (evict the item used furthest in the future) is optimal only
for equal sizes and costs; with sizes and costs, every Belady-like rule is a heuristic, i.e. an *upper*
bound on OPT, and cannot tell how far a policy is from optimal. The LP bound can. It is loose where the
instant-by-instant packing matters (bursts shorter than a bucket, models that barely fit), and it credits
the offline schedule with loads that take no time to make room, so a policy's ratio to it overstates its
distance from OPT.

Cost: intervals = requests − distinct models; non-zeros = Σ buckets spanned per interval. Intervals that
span too many buckets to matter are not dropped (that would not be a relaxation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csr_matrix

from .trace import Trace


@dataclass
class Bound:
    compulsory_s: float
    capacity_s: float
    intervals: int
    buckets: int
    solve_s: float
    status: str

    @property
    def total_s(self) -> float:
        return self.compulsory_s + self.capacity_s


def lower_bound(
    trace: Trace,
    capacity_bytes: int,
    *,
    bucket_s: float = 60.0,
    measure_from_ms: int = 0,
    pod_capacity: int | None = None,
) -> Bound:
    """The bound on the load time of the requests at or after ``measure_from_ms`` (trace time). Requests
    before it (a warm-up) only say what may already be cached then: the offline schedule may hold any models
    up to C bytes at that instant, so a model requested before and again after it costs its first load in the
    window only if it was not kept from ``measure_from_ms`` on; a model first requested in the window is
    compulsory."""
    started = time.perf_counter()
    t = trace.t_ms.astype(np.int64)
    m = trace.model.astype(np.int64)
    size = trace.catalog.size.astype(np.float64)
    cost = trace.catalog.load_ms.astype(np.float64)
    first_seen = np.full(len(trace.catalog), np.iinfo(np.int64).max)
    np.minimum.at(first_seen, m, t)
    new_in_window = np.flatnonzero((first_seen >= measure_from_ms) & (first_seen < np.iinfo(np.int64).max))
    if pod_capacity is not None:
        # a model larger than a pod is never loaded by any policy (its requests fail): it costs nothing
        fits = size <= pod_capacity
        new_in_window = new_in_window[fits[new_in_window]]
        keep_req = fits[m]
        t, m = t[keep_req], m[keep_req]
    compulsory = float(cost[new_in_window].sum()) / 1000
    order = np.lexsort((t, m))
    ms, ts = m[order], t[order]
    same = ms[1:] == ms[:-1]
    a, b, im = ts[:-1][same], ts[1:][same], ms[1:][same]
    in_window = b >= measure_from_ms
    a, b, im = np.maximum(a[in_window], measure_from_ms), b[in_window], im[in_window]
    keep = b > a  # a zero-length interval needs no capacity: kept for free in any schedule
    a, b, im = a[keep], b[keep], im[keep]
    n = len(a)
    if n == 0:
        return Bound(compulsory, 0.0, 0, 0, time.perf_counter() - started, "no intervals")
    bucket = int(bucket_s * 1000)
    horizon = int(t.max()) + 1
    k = (horizon + bucket - 1) // bucket
    first, last = a // bucket, (b - 1) // bucket  # buckets before the window get no rows: rhs only
    span = (last - first + 1).astype(np.int64)
    rows = np.repeat(np.arange(n), span)
    offsets = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
    cols = np.repeat(first, span) + offsets
    lo = np.maximum(np.repeat(a, span), cols * bucket)
    hi = np.minimum(np.repeat(b, span), (cols + 1) * bucket)
    overlap = (hi - lo).astype(np.float64)
    # constraint rows are buckets; scale bytes·ms to GiB·s so HiGHS sees numbers near 1
    scale = 1.0 / ((1 << 30) * 1000.0)
    values = size[im][rows] * overlap * scale
    matrix = csr_matrix((values, (cols, rows)), shape=(k, n))
    bucket_len = np.full(k, float(bucket))
    bucket_len[-1] = horizon - (k - 1) * bucket
    rhs = capacity_bytes * bucket_len * scale
    c = cost[im] / 1000.0
    res = linprog(-c, A_ub=matrix, b_ub=rhs, bounds=(0.0, 1.0), method="highs")
    if res.status != 0:
        raise RuntimeError(f"lower-bound LP did not solve: {res.message}")
    capacity_part = float(c.sum() + res.fun)  # Σ c − max Σ c·x = min Σ c·(1 − x)
    return Bound(compulsory, max(0.0, capacity_part), n, k, time.perf_counter() - started, res.message)
