"""Model sizes: prediction before a load, measurement after it, and learning one from the other.

Prediction (``predictModelSize``, must answer in well under 500 ms, no download): disk size x a per-type
multiplier, or ``default_size`` (1,000,000 bytes) when the disk size is unknown (remote storage). Start
multipliers, chosen from how each library inflates its file in memory:

- ``sklearn`` 2.0: unpickled numpy arrays are about file size, plus Python object overhead per estimator.
- ``xgboost`` 2.5 / ``lightgbm`` 2.5: JSON/text model files are parsed into tree arrays plus the library's
  own caches (the text is larger than the arrays, but the boosters keep extra per-tree buffers).
- ``onnx`` 2.0: onnxruntime keeps the proto and its optimised graph/initializers.
- anything else 1.25 (ModelMesh's ``MODELSIZE_MULTIPLIER``). ``MODELSIZE_MULTIPLIER`` replaces them all.

Learning: after each real measurement of a type, its multiplier becomes a running mean of measured/disk,
weighted by disk size, with the start multiplier counted as a prior worth ``PRIOR_BYTES`` of disk. Models
under ``MIN_LEARN_DISK_BYTES`` do not teach: their RSS delta is dominated by fixed per-model overhead and
would inflate the ratio for the big models where the prediction matters. Ratios are clamped to
[1, ``MAX_RATIO``] so one odd measurement cannot poison predictions.

Measurement (``loadModel``'s sizeInBytes): the resident-memory (RSS) delta of this process across the load,
taken while holding ``RssMeter``'s lock so concurrent loads do not mix their deltas (predictions and gRPC
threads still run and add noise; the floor below absorbs most of it). Library start-up costs are kept out
of it: the adapter imports and warms each library before measuring, and a load that imported new modules
is treated as unmeasured. When the delta is <= 0 (the allocator reused memory freed by an earlier unload,
which glibc does for small blocks) or unmeasured, the structural estimate is used instead: disk size x the
type's current multiplier. A positive delta is floored at the
disk size and at ``MIN_MODEL_BYTES``, since a loaded model holds at least its own bytes and objects.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from puller.confine import Root, resolve_beneath, walk_beneath
from puller.errors import PullError

T = TypeVar("T")

DEFAULT_MULTIPLIERS: dict[str, float] = {"sklearn": 2.0, "xgboost": 2.5, "lightgbm": 2.5, "onnx": 2.0}
FALLBACK_MULTIPLIER = 1.25
DEFAULT_MODEL_SIZE = 1_000_000
MIN_MODEL_BYTES = 16 * 1024
MIN_LEARN_DISK_BYTES = 64 * 1024
PRIOR_BYTES = 1 << 20
MAX_RATIO = 20.0


@dataclass(frozen=True, slots=True)
class Measurement:
    size_bytes: int
    source: str
    """``rss`` (measured delta), ``rss-floor`` (delta raised to the floor) or ``estimate``."""
    rss_delta: int | None


class SizeModel:
    """Per-type multipliers with learning. Not thread-safe: call it from the event loop only."""

    def __init__(
        self,
        *,
        default_size: int = DEFAULT_MODEL_SIZE,
        multipliers: Mapping[str, float] | None = None,
        override_multiplier: float = 0.0,
    ) -> None:
        self.default_size = default_size
        base = dict(DEFAULT_MULTIPLIERS if multipliers is None else multipliers)
        if override_multiplier > 0:
            base = dict.fromkeys(base, override_multiplier)
        self._fallback = override_multiplier if override_multiplier > 0 else FALLBACK_MULTIPLIER
        self._prior = base
        self._sum_measured: dict[str, float] = {}
        self._sum_disk: dict[str, float] = {}

    def multiplier(self, model_type: str) -> float:
        prior = self._prior.get(model_type, self._fallback)
        disk = self._sum_disk.get(model_type, 0.0)
        if disk <= 0:
            return prior
        return (prior * PRIOR_BYTES + self._sum_measured[model_type]) / (PRIOR_BYTES + disk)

    def predict(self, model_type: str, disk_size_bytes: int | None) -> int:
        """Predicted in-memory size; the default size when the disk size is unknown."""
        if not disk_size_bytes or disk_size_bytes <= 0:
            return self.default_size
        return max(MIN_MODEL_BYTES, int(disk_size_bytes * self.multiplier(model_type)))

    def measured(self, model_type: str, disk_size_bytes: int, rss_delta: int | None) -> Measurement:
        """Turn an RSS delta into the size reported for a load, learning from it when it is genuine."""
        disk = max(0, disk_size_bytes)
        if rss_delta is None or rss_delta <= 0:
            return Measurement(self.predict(model_type, disk), "estimate", rss_delta)
        floor = max(disk, MIN_MODEL_BYTES)
        if rss_delta < floor:
            return Measurement(floor, "rss-floor", rss_delta)
        if disk >= MIN_LEARN_DISK_BYTES:
            ratio = min(MAX_RATIO, max(1.0, rss_delta / disk))
            self._sum_measured[model_type] = self._sum_measured.get(model_type, 0.0) + ratio * disk
            self._sum_disk[model_type] = self._sum_disk.get(model_type, 0.0) + disk
        return Measurement(rss_delta, "rss", rss_delta)


class RssMeter:
    """Measures the RSS delta of a blocking call, one call at a time (a threading lock, since loads run in
    executor threads). A call that cannot get the lock within ``wait_s`` runs unmeasured (delta None)
    rather than queueing behind a load that may be stuck past its deadline. A call during which new Python
    modules were imported is unmeasured too: unpickling the first model of a class imports that class's
    modules (megabytes that stay after the model goes), which must not be charged to the model."""

    def __init__(self, rss: Callable[[], int] | None = None) -> None:
        self._lock = threading.Lock()
        proc = psutil.Process(os.getpid())
        self._rss = rss or (lambda: proc.memory_info().rss)

    def run(self, fn: Callable[[], T], *, wait_s: float) -> tuple[T, int | None]:
        if not self._lock.acquire(timeout=max(0.0, wait_s)):
            return fn(), None
        try:
            modules = len(sys.modules)
            before = self._rss()
            result = fn()
            delta = self._rss() - before
            return result, (delta if len(sys.modules) == modules else None)
        finally:
            self._lock.release()


def disk_size(
    path: Path, root: Root | None = None, *, max_entries: int = 10_000, budget_s: float = 0.2
) -> int | None:
    """Bytes of the regular files of a file or directory tree, links resolved inside ``root`` (default: the
    path itself) by ``puller.confine``. None when the path does not exist, a link leaves the root, or the
    walk exceeds ``max_entries``/``budget_s`` (it must stay fast)."""
    try:
        if root is None:
            root = Root.of(path if path.is_dir() else path.parent)
        real = resolve_beneath(root, Path(os.path.abspath(path)))
        if real.is_file():
            return real.stat().st_size
        if not real.is_dir():
            return None
        deadline = time.monotonic() + budget_s
        total = 0
        for seen, f in enumerate(walk_beneath(root, real, max_entries=max_entries), start=1):
            if seen > max_entries or time.monotonic() > deadline:
                return None
            total += f.size
        return total
    except (PullError, OSError, ValueError):
        return None
