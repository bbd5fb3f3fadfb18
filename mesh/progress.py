"""Waiting for models to load, with live progress: what ``register --sync``, ``ensure-loaded --sync`` (and
``mesh apply``) show while a load runs.

Owns the wait loop (poll each model's status until it is LOADED or LOADING_FAILED, or the deadline passes)
and the rendering of its progress: one line per change of state, copies and size, or, on a terminal, one
line rewritten in place (and a summary line when several models are awaited). The deadline follows the
pod's load timeout (reported by ``meshadmin.ClusterStatus``) plus a margin for queueing, not a fixed number.
User-side code (the CLI's), so it reads the wall clock directly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

#: Added to the pod's load timeout: a load may wait for a loading slot, and the registry trails by a moment.
WAIT_MARGIN_S = 30.0
DEFAULT_LOAD_TIMEOUT_S = 90.0  # when the pod does not report one (an older pod)
DONE = ("LOADED", "LOADING_FAILED", "NOT_FOUND")


@dataclass
class ModelProgress:
    """What is known of one awaited model."""

    model_id: str
    status: str = "UNKNOWN"
    copies: list[tuple[str, str]] = field(default_factory=list)  # (pod, copy status)
    errors: list[str] = field(default_factory=list)
    size_bytes: int = 0
    final: dict[str, Any] | None = None  # the last status dict, as the client returned it

    @property
    def done(self) -> bool:
        return self.status in DONE

    def line(self, elapsed_s: float) -> str:
        copies = ", ".join(f"{pod} {st.lower()}" for pod, st in self.copies) or "no copy yet"
        size = f", {human_bytes(self.size_bytes)}" if self.size_bytes else ""
        return f"{self.model_id}: {self.status} after {elapsed_s:.1f}s ({copies}{size})"


def wait_deadline_s(load_timeout_ms: int, override_s: float | None = None) -> float:
    """How long to wait for a load: ``override_s`` if given, else the pod's load timeout plus a margin."""
    if override_s is not None:
        return override_s
    base = load_timeout_ms / 1000 if load_timeout_ms > 0 else DEFAULT_LOAD_TIMEOUT_S
    return base + WAIT_MARGIN_S


def wait_for_models(
    status_of: Callable[[str], dict[str, Any]],
    model_ids: Sequence[str],
    *,
    timeout_s: float,
    on_update: Callable[[list[ModelProgress], float], None] = lambda models, elapsed: None,
    sizes: Callable[[Iterable[str]], dict[str, int]] | None = None,
    poll_s: float = 0.25,
    max_poll_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[ModelProgress], bool]:
    """Poll ``status_of(model_id)`` (a ``MeshClient.status``) until every model is done or ``timeout_s``
    passes; ``on_update`` hears every poll round. ``sizes`` (optional) maps loaded ids to their sizes. Returns the
    progress of each model and whether all finished in time. Polls quickly at first, then every
    ``max_poll_s``, so a long load costs a handful of calls a minute."""
    progress = [ModelProgress(m) for m in model_ids]
    start = clock()
    delay = poll_s
    while True:
        for p in progress:
            if p.done:
                continue
            st = status_of(p.model_id)
            p.final = st
            p.status = st["status"]
            p.copies = [(c["location"], c["status"]) for c in st.get("copies", [])]
            p.errors = list(st.get("errors", []))
        if sizes is not None:  # a size is measured by the load: ask once a model is loaded
            wanted = [p.model_id for p in progress if p.status == "LOADED" and not p.size_bytes]
            known = sizes(wanted) if wanted else {}
            for p in progress:
                p.size_bytes = p.size_bytes or known.get(p.model_id, 0)
        elapsed = clock() - start
        on_update(progress, elapsed)
        if all(p.done for p in progress):
            return progress, True
        if elapsed >= timeout_s:
            return progress, False
        sleep(min(delay, max(0.0, timeout_s - elapsed)))
        delay = min(max_poll_s, delay * 1.5)


class ProgressPrinter:
    """Renders wait progress on ``stream`` (stderr, so stdout stays machine-readable). On a terminal the
    line is rewritten in place; otherwise a line is printed when a model's state changes, and at most every
    ``heartbeat_s`` while nothing changes."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, heartbeat_s: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.heartbeat_s = heartbeat_s
        self._last_states: dict[str, tuple] = {}
        self._last_print = -1e9
        self._width = 0

    def __call__(self, models: list[ModelProgress], elapsed_s: float) -> None:
        if self.tty:
            text = models[0].line(elapsed_s) if len(models) == 1 else summary(models, elapsed_s)
            pad = " " * max(0, self._width - len(text))
            self.stream.write("\r" + text + pad)
            self._width = len(text)
            self.stream.flush()
            return
        changed = [m for m in models if self._last_states.get(m.model_id) != _state(m)]
        for m in changed:
            self._last_states[m.model_id] = _state(m)
            self.stream.write(m.line(elapsed_s) + "\n")
        if changed:
            self._last_print = elapsed_s
            if len(models) > 1:
                self.stream.write(summary(models, elapsed_s) + "\n")
        elif elapsed_s - self._last_print >= self.heartbeat_s:
            self._last_print = elapsed_s
            self.stream.write(summary(models, elapsed_s) + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()


def _state(m: ModelProgress) -> tuple:
    return (m.status, tuple(m.copies), m.size_bytes)


def summary(models: Sequence[ModelProgress], elapsed_s: float) -> str:
    counts: dict[str, int] = {}
    for m in models:
        counts[m.status] = counts.get(m.status, 0) + 1
    parts = ", ".join(f"{n} {st.lower()}" for st, n in sorted(counts.items()))
    return f"{len(models)} model(s): {parts} after {elapsed_s:.1f}s"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"
