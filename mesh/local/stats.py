"""RequestStats: in-memory request counters of this pod (per model and total), turned into requests per
minute by a periodic roll-up. Counting is one dict increment on the hot path; nothing here touches etcd —
the instance publisher and the copy scaler read the rolled-up rates."""

from __future__ import annotations

from collections import defaultdict, deque


class RequestStats:
    def __init__(self, window_s: float = 60.0, tick_s: float = 10.0) -> None:
        self._counts: dict[str, int] = defaultdict(int)
        self._total = 0
        self._history: deque[tuple[int, dict[str, int]]] = deque(maxlen=max(1, int(window_s / tick_s)))
        self._tick_s = tick_s
        self.model_rpm: dict[str, float] = {}
        self.rpm = 0.0
        # start of each model's unbroken run of ticks with at least one request ("in regular use")
        self.in_use_since: dict[str, int] = {}

    def record(self, model_id: str, requests: int = 1) -> None:
        """Count ``requests`` served for ``model_id`` (more than one: a data-plane worker's batched report)."""
        self._counts[model_id] += requests
        self._total += requests

    def roll(self, now_ms: int | None = None) -> None:
        """Close the current tick and recompute rates over the window (called every ``tick_s``).

        A model used in every tick keeps its ``in_use_since``; one idle tick resets it. Continuous use
        therefore accumulates (unlike ModelMesh's second-copy marker, reset by every use: its issue #151).
        """
        if now_ms is not None:
            used = set(self._counts)
            self.in_use_since = {m: self.in_use_since.get(m, now_ms) for m in used}
        self._history.append((self._total, dict(self._counts)))
        self._counts.clear()
        self._total = 0
        minutes = len(self._history) * self._tick_s / 60
        totals: dict[str, int] = defaultdict(int)
        for _, counts in self._history:
            for k, v in counts.items():
                totals[k] += v
        self.model_rpm = {k: v / minutes for k, v in totals.items()}
        self.rpm = sum(t for t, _ in self._history) / minutes
