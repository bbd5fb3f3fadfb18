"""The disk budget: how many bytes pulled models may take under ``model_dir``, and what gets deleted.

Policy (docs/storage.md "Disk budget"): a model is *in use* from the moment its pull completes until
``remove()`` is called for it (the runtime calls ``remove`` on unloadModel), and in-use models are never
deleted to make room. The only evictable files are model dirs found on disk at start-up that no pull in
this process has claimed (left by an earlier process); they go oldest-mtime first. Before a download, the
puller reserves the bytes it knows it needs (S3 sizes from the listing, HTTP Content-Length); downloads
of unknown size grow their reservation as bytes arrive. If the reservation cannot fit after evicting every
evictable dir, the pull fails with DiskBudgetExceeded (retryable: another model's ``remove`` frees room).
A budget of 0 means unlimited (sizes are still tracked). Thread-safe: reservations grow from I/O threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from puller.errors import DiskBudgetExceeded

log = logging.getLogger("puller.budget")


class Reservation:
    """Bytes held for one in-flight download."""

    def __init__(self, budget: DiskBudget, model_id: str, size: int) -> None:
        self.budget = budget
        self.model_id = model_id
        self.size = size

    def grow(self, extra: int) -> None:
        self.budget._grow(self, extra)

    def release(self) -> None:
        self.budget._release(self)


class DiskBudget:
    def __init__(self, budget_bytes: int, *, delete: Callable[[str], None]) -> None:
        self.budget_bytes = budget_bytes
        self._delete = delete  # deletes <model_dir>/<model_id>; blocking
        self._lock = threading.Lock()
        self._in_use: dict[str, int] = {}
        self._leftover: dict[str, tuple[int, float]] = {}  # model_id -> (size, mtime)
        self._reserved = 0

    def adopt_leftovers(self, found: list[tuple[str, int, float]]) -> None:
        with self._lock:
            for model_id, size, mtime in found:
                if model_id not in self._in_use:
                    self._leftover[model_id] = (size, mtime)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used()

    def _used(self) -> int:
        return sum(self._in_use.values()) + sum(s for s, _ in self._leftover.values()) + self._reserved

    def reserve(self, model_id: str, size: int) -> Reservation:
        """Hold ``size`` bytes for ``model_id``, evicting leftovers if needed. Blocking (may delete files)."""
        res = Reservation(self, model_id, 0)
        self._grow(res, size)
        return res

    def _grow(self, res: Reservation, extra: int) -> None:
        if extra <= 0:
            return
        victims: list[str] = []
        with self._lock:
            # A model being re-pulled replaces its own older copy: that copy's bytes count as free.
            own = self._in_use.get(res.model_id, 0) + self._leftover.get(res.model_id, (0, 0.0))[0]
            if self.budget_bytes > 0:
                over = self._used() - own + extra - self.budget_bytes
                if over > 0:
                    for model_id, (size, _mtime) in sorted(self._leftover.items(), key=lambda kv: kv[1][1]):
                        if over <= 0:
                            break
                        if model_id == res.model_id:
                            continue
                        victims.append(model_id)
                        over -= size
                    if over > 0:
                        available = self.budget_bytes - (self._used() - own)
                        raise DiskBudgetExceeded(
                            model_id=res.model_id, needed=res.size + extra,
                            available=max(0, available + res.size), budget=self.budget_bytes,
                        )  # fmt: skip
                    for model_id in victims:
                        del self._leftover[model_id]
            self._reserved += extra
            res.size += extra
        for model_id in victims:
            log.info("disk budget: deleting model '%s' left on disk by an earlier process", model_id)
            self._delete(model_id)

    def _release(self, res: Reservation) -> None:
        with self._lock:
            self._reserved -= res.size
            res.size = 0

    def commit(self, res: Reservation, actual_size: int) -> None:
        """The download finished: its bytes now belong to an in-use model."""
        with self._lock:
            self._reserved -= res.size
            res.size = 0
            self._leftover.pop(res.model_id, None)
            self._in_use[res.model_id] = actual_size

    def forget(self, model_id: str) -> None:
        """The model's files were deleted."""
        with self._lock:
            self._in_use.pop(model_id, None)
            self._leftover.pop(model_id, None)
