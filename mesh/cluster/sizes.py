"""Model sizes the mesh plans with before a load: the order of the sources, the override, and per-type means.

Pure and bounded, no I/O. The runtime already learns bytes-in-memory per byte-on-disk per model type
(``runtime_adapters/sizing.py``) and answers ``predictModelSize`` with it; that needs the artifact's disk
size, so it answers 0 ("unknown") for remote storage and for runtimes without sizing. This module adds what
only the mesh can know, and fixes one order for every prediction (placement, the cache reservation):

  1. the operator's override (``mm-model-size`` at registration, stored in the record): for a model whose
     measured size is noisy, or whose first load must be planned; it also wins over measurements;
  2. the measured size of an earlier copy (``ModelRecord.size``, written when a copy loads);
  3. the runtime's prediction (``predictModelSize``), when it is not 0;
  4. the mean measured size of loaded models of the same type in this cluster (``TypeSizes``, learned from
     the registry the pod already watches), once ``min_samples`` models of the type were measured;
  5. the default size (``MM_DEFAULT_MODEL_SIZE`` or the runtime's).

That is the order of placement (``Availability.pick``), which cannot ask a runtime. The pod that reserves
room for a load asks its runtime first (``mesh.local.loader``: override, runtime prediction, measured size if
it fits the cache, type mean, default): the runtime's prediction is in the units of its own capacity, and a
noisy measurement larger than the whole cache must not lock a model out of every pod.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from mesh.errors import InvalidRequest

MAX_SIZE_OVERRIDE = 1 << 40  # 1 TiB: above any one model a pod could hold
MAX_TYPES = 256
MIN_SAMPLES = 3


def parse_size_override(text: str | None) -> int:
    """The ``mm-model-size`` registration value in bytes (0 = none); INVALID_ARGUMENT naming the problem."""
    if text is None or not text.strip():
        return 0
    raw = text.strip()
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest(f"mm-model-size must be a whole number of bytes, got {raw[:40]!r}")
    value = int(raw)
    if not 0 < value <= MAX_SIZE_OVERRIDE:
        raise InvalidRequest(f"mm-model-size must be between 1 and {MAX_SIZE_OVERRIDE} bytes, got {value}")
    return value


@dataclass(slots=True)
class _Mean:
    total: int = 0
    count: int = 0


class TypeSizes:
    """Running mean of measured sizes per model type, over at most ``max_types`` types (least recently
    updated type forgotten first: types come from registrations, which clients control)."""

    def __init__(self, *, max_types: int = MAX_TYPES, min_samples: int = MIN_SAMPLES) -> None:
        self.max_types = max(1, max_types)
        self.min_samples = max(1, min_samples)
        self._means: OrderedDict[str, _Mean] = OrderedDict()

    def observe(self, model_type: str, size: int) -> None:
        if size <= 0:
            return
        mean = self._means.pop(model_type, None) or _Mean()
        mean.total += size
        mean.count += 1
        self._means[model_type] = mean
        while len(self._means) > self.max_types:
            self._means.popitem(last=False)

    def forget(self, model_type: str, size: int) -> None:
        """A measured model left the registry (unregistered, or its size replaced by a new measurement)."""
        mean = self._means.get(model_type)
        if mean is None or size <= 0:
            return
        mean.total = max(0, mean.total - size)
        mean.count = max(0, mean.count - 1)
        if mean.count == 0:
            del self._means[model_type]

    def predict(self, model_type: str) -> int:
        """The mean measured size of ``model_type``, or 0 until ``min_samples`` were measured."""
        mean = self._means.get(model_type)
        if mean is None or mean.count < self.min_samples:
            return 0
        return mean.total // mean.count

    def __len__(self) -> int:
        return len(self._means)


def planned_size(
    *, override: int = 0, measured: int = 0, runtime_predicted: int = 0, type_mean: int = 0, default: int
) -> int:
    """The first known source in the module docstring's order."""
    for value in (override, measured, runtime_predicted, type_mean):
        if value and value > 0:
            return value
    return default
