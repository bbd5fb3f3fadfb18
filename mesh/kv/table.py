"""``Table[R]``: a watch-fed, in-memory copy of one etcd prefix, and the one CAS update loop.

Every owner module (registry, instances, vmodels) keeps its key family in a Table: readers use ``get`` /
``items`` (memory only, never awaiting etcd, so the hot path can use them), writers use ``update`` (a
read-modify-CAS loop on ``mod_revision``; style rule 7), and listeners hear about each applied change.

Consistency rules:
- ``start`` lists the prefix once, then a supervised task (``mesh:table:<name>``) watches from the list's
  header revision + 1. When the watch breaks (etcd down or restarted) it is re-created with backoff from the
  last applied revision + 1; if that revision was compacted (or the store went back in time, i.e. etcd lost its
  data) it re-lists and emits listener diffs (puts for changed ids, deletes for vanished ones).
- Per id, a change is applied only if its revision is newer than the cached one; ``update`` applies its own
  write at once (not waiting for the watch) and records a tombstone for its deletes, so a late watch event can
  never bring back an older value.
- ``revision`` is the last store revision applied from the watch or a list (local writes don't move it: a watch
  must never resume past events it hasn't seen).
- Reads see an immutable ``FrozenMap``: every applied change (a watch batch, a list, a local write) builds a
  new map and swaps it in whole, then the commit listeners run, so a reader holding ``snapshot()`` never sees
  it change under it (the cluster view is built from these snapshots).
- Undecodable values are logged once per key and skipped; listener errors are logged; neither stops the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from mesh.errors import KvCompacted, KvConflict, KvUnavailable
from mesh.frozenmap import EMPTY, FrozenMap
from mesh.kv.client import KvClient, KvEntry, WatchEvent
from mesh.kv.keys import Keys
from mesh.tasks import TaskSupervisor, start_loop

log = logging.getLogger(__name__)


class _Record(Protocol):
    revision: int

    def to_json(self) -> bytes: ...


R = TypeVar("R", bound=_Record)
Listener = Callable[[str, R | None, R | None], None]


class Table(Generic[R]):
    """Local copy of ``prefix``; ids are keys minus the prefix. See the module docstring for the rules."""

    def __init__(
        self,
        kv: KvClient,
        prefix: str,
        decode: Callable[[bytes, int], R],
        *,
        name: str,
        backoff_max: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self._kv = kv
        self.prefix = prefix
        self._decode = decode
        self.name = name
        self._items: FrozenMap[R] = EMPTY
        self._pending: dict[str, R | None] | None = None  # changes staged during one batch
        self._commit_listeners: list[Callable[[], None]] = []
        self._creates: _CreateBatcher[R] = _CreateBatcher(self)
        self._tombstones: dict[str, int] = {}  # id -> revision at/below which events for id are stale
        self._bad: set[str] = set()  # ids whose current value failed to decode (logged once)
        self._listeners: list[Listener[R]] = []
        self._task: asyncio.Task[None] | None = None
        self._healthy = False
        self._changed = asyncio.Event()
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self.revision = 0

    # --- reads (memory only) ------------------------------------------------------------------

    def get(self, id: str) -> R | None:
        pending = self._pending
        if pending is not None and id in pending:
            return pending[id]
        return self._items.get(id)

    def snapshot(self) -> FrozenMap[R]:
        """The current records as an immutable map (a later change builds a new one)."""
        return self._items

    items = snapshot

    def add_commit_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` after each new snapshot is swapped in (once per watch batch, list or local write)."""
        self._commit_listeners.append(fn)

    @property
    def healthy(self) -> bool:
        """True while the watch is established."""
        return self._healthy

    def add_listener(self, fn: Listener[R]) -> None:
        """``fn(id, old, new)`` after every applied change (``new`` None = deleted), on the loop.

        Listeners added before ``start`` also hear the initial list as ``(id, None, record)``.
        """
        self._listeners.append(fn)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, tasks: TaskSupervisor | None = None) -> None:
        """Load the prefix (returns when loaded), then watch it in a supervised task."""
        if self._task is not None:
            return
        await self._relist()
        self._task = start_loop(tasks, f"mesh:table:{self.name}", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._healthy = False

    async def wait_revision(self, revision: int) -> None:
        """Wait until the watch (or a re-list) has applied ``revision``. Bound it with ``asyncio.timeout``."""
        while self.revision < revision:
            await self._changed.wait()

    # --- strong read and CAS update ------------------------------------------------------------

    def key(self, id: str) -> str:
        return Keys.in_prefix(self.prefix, id)

    async def get_strong(self, id: str) -> R | None:
        """Read ``id`` from etcd (linearizable) and refresh the cache if the read is newer."""
        entry, header_rev = await self._kv.get_with_revision(self.key(id))
        if entry is None:
            cached = self.get(id)
            if cached is not None and cached.revision < header_rev:
                self._apply_delete(id, header_rev)
            return None
        record = self._decode_entry(id, entry.value, entry.mod_revision)
        if record is None:
            raise ValueError(f"{self.name}: cannot decode value of {id!r}")
        self._apply_put(id, record)
        cached = self.get(id)
        return cached if cached is not None and cached.revision >= record.revision else record

    async def update(
        self,
        id: str,
        fn: Callable[[R | None], R | None],
        *,
        lease: int | None = None,
        max_attempts: int = 16,
    ) -> R | None:
        """Read-modify-CAS ``id``: ``fn(current)`` returns the new record, ``current`` itself (no write) or
        None (delete). On conflict ``fn`` is re-applied to the value the failed txn read. Returns the record as
        written (with its new revision). ``fn`` must be pure: it may run several times. Raises ``KvConflict``
        after ``max_attempts``; ``KvUnavailable`` propagates (a lost reply may hide a successful write, so only
        retry idempotent ``fn``s).
        """
        key = self.key(id)
        current = self.get(id)
        if current is None:
            created = _created(fn)
            if created is not None and lease is None:
                # Not in the snapshot and ``fn`` makes a record out of nothing: a create-only write, batched
                # with concurrent ones into one etcd transaction (registration: no read first, and one
                # round trip for many new models). If the key exists after all, read it and go on below.
                written = await self._creates.create(id, created)
                if written is not None:
                    return written
            current = await self.get_strong(id)
        for _ in range(max_attempts):
            new = fn(current)
            if new is current:
                return current
            if new is None:
                if current is None:
                    return None
                ok, entry = await self._kv.cas_delete(key, current.revision)
                if ok:
                    self._apply_delete(id, current.revision)
                    return None
            else:
                expected = current.revision if current is not None else 0
                ok, entry = await self._kv.cas_put(key, new.to_json(), expected, lease=lease)
                if ok and entry is not None:
                    written = _with_revision(new, entry, self._decode)
                    self._apply_put(id, written)
                    return written
            current = self._from_conflict(id, entry)
        raise KvConflict(f"{self.name}: update of {id!r} lost {max_attempts} compare-and-swaps in a row")

    def _apply_local(self, id: str, record: R | None, revision: int) -> None:
        """Apply a write this process made at ``revision`` (from ``commit_all``)."""
        if record is None:
            self._apply_delete(id, revision)
        else:
            self._apply_put(id, dataclasses.replace(record, revision=revision))  # type: ignore[type-var]

    def _from_conflict(self, id: str, entry: KvEntry | None) -> R | None:
        if entry is None:
            return None
        record = self._decode_entry(id, entry.value, entry.mod_revision)
        if record is None:
            raise ValueError(f"{self.name}: cannot decode value of {id!r}")
        self._apply_put(id, record)
        return record

    # --- applying changes ---------------------------------------------------------------------

    def _decode_entry(self, id: str, raw: bytes, revision: int) -> R | None:
        try:
            record = self._decode(raw, revision)
        except Exception as exc:
            if id not in self._bad:
                self._bad.add(id)
                log.warning(
                    "%s: skipping undecodable value of %r at revision %d: %s", self.name, id, revision, exc
                )
            return None
        self._bad.discard(id)
        return record

    def _notify(self, id: str, old: R | None, new: R | None) -> None:
        for fn in list(self._listeners):
            try:
                fn(id, old, new)
            except Exception:
                log.exception("%s: listener %r failed for %r", self.name, fn, id)

    def _apply_put(self, id: str, record: R) -> None:
        old = self.get(id)
        if old is not None and old.revision >= record.revision:
            return
        if record.revision <= self._tombstones.get(id, 0):
            return
        self._stage(id, record)
        self._notify(id, old, record)

    def _apply_delete(self, id: str, revision: int) -> None:
        """Forget ``id``; events for it at or below ``revision`` are stale from now on."""
        if revision > self._tombstones.get(id, 0):
            self._tombstones[id] = revision
        old = self.get(id)
        if old is None or old.revision > revision:
            return
        self._stage(id, None)
        self._notify(id, old, None)

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """Stage every change made inside, then swap in one new snapshot (and tell commit listeners)."""
        if self._pending is not None:  # nested: the outer batch commits
            yield
            return
        self._pending = {}
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            self._commit(pending)

    def _stage(self, id: str, record: R | None) -> None:
        if self._pending is not None:
            self._pending[id] = record
        else:
            self._commit({id: record})

    def _commit(self, changes: dict[str, R | None]) -> None:
        if not changes:
            return
        self._items = self._items.evolve(changes)
        for fn in list(self._commit_listeners):
            try:
                fn()
            except Exception:
                log.exception("%s: commit listener %r failed", self.name, fn)

    def _apply_batch(self, batch: list[WatchEvent]) -> None:
        with self._batch():
            self._apply_events(batch)
        self._advanced()

    def _apply_events(self, batch: list[WatchEvent]) -> None:
        for ev in batch:
            id = ev.key[len(self.prefix) :]
            if ev.kind == "delete":
                self._bad.discard(id)
                old = self.get(id)
                if old is not None and old.revision < ev.mod_revision:
                    self._apply_delete(id, ev.mod_revision)
            else:
                if ev.mod_revision <= self._tombstones.get(id, 0):
                    continue
                cached = self.get(id)
                if cached is not None and cached.revision >= ev.mod_revision:
                    continue
                record = self._decode_entry(id, ev.value, ev.mod_revision)
                if record is not None:
                    self._apply_put(id, record)
            self.revision = max(self.revision, ev.mod_revision)

    def _advanced(self) -> None:
        if self._tombstones:
            self._tombstones = {i: r for i, r in self._tombstones.items() if r > self.revision}
        self._changed.set()
        self._changed = asyncio.Event()

    async def _relist(self, *, reset: bool = False) -> None:
        """Full list; applies differences (and emits them) without regressing newer local writes.

        ``reset``: the store lost its history (revisions restarted), so cached revisions mean nothing and
        whatever the list says wins.
        """
        entries, header_rev = await self._kv.get_prefix(self.prefix)
        with self._batch():
            if reset:
                self._tombstones.clear()
            seen: set[str] = set()
            for entry in entries:
                id = entry.key[len(self.prefix) :]
                seen.add(id)
                cached = self.get(id)
                if cached is not None and cached.revision == entry.mod_revision:
                    continue
                if cached is not None and cached.revision > entry.mod_revision and not reset:
                    continue
                record = self._decode_entry(id, entry.value, entry.mod_revision)
                if record is None:
                    continue
                if reset and cached is not None:
                    self._stage(id, record)
                    self._notify(id, cached, record)
                else:
                    self._apply_put(id, record)
            for id, cached in list(self._items.items()):
                if id not in seen and (reset or cached.revision <= header_rev):
                    self._stage(id, None)
                    self._tombstones[id] = max(header_rev, self._tombstones.get(id, 0))
                    self._notify(id, cached, None)
        self.revision = header_rev
        self._advanced()

    # --- the watch ----------------------------------------------------------------------------

    async def _run(self) -> None:
        """Supervised watch loop: resume from ``revision + 1``, re-list on compaction, back off on errors."""
        delay = 0.05
        check_reset = False
        while True:
            try:
                if check_reset:
                    await self._check_store_reset()
                async for batch in self._kv.watch_prefix(self.prefix, self.revision + 1):
                    if not self._healthy:
                        self._healthy, delay, check_reset = True, 0.05, False
                    if batch:
                        self._apply_batch(batch)
            except KvCompacted as exc:
                self._healthy = False
                log.info(
                    "%s: revision %d compacted (%d); re-listing",
                    self.name,
                    self.revision,
                    exc.compact_revision,
                )
                try:
                    await self._relist()
                    continue
                except Exception as relist_exc:
                    log.info("%s: re-list failed: %s", self.name, relist_exc)
            except KvUnavailable as exc:
                self._healthy = False
                log.info("%s: watch lost (%s); retrying from revision %d", self.name, exc, self.revision + 1)
            except asyncio.CancelledError:
                self._healthy = False
                raise
            except Exception:
                self._healthy = False
                log.exception("%s: watch failed; restarting", self.name)
            check_reset = True
            await asyncio.sleep(self._rng.uniform(delay / 2, delay))
            delay = min(self._backoff_max, delay * 2)

    async def _check_store_reset(self) -> None:
        """If etcd's revision is behind ours, the store lost its data and a watch from our revision would
        wait forever: re-list, letting the store win."""
        current = await self._kv.current_revision()
        if current < self.revision:
            log.warning(
                "%s: etcd revision went back (%d < %d); re-listing", self.name, current, self.revision
            )
            await self._relist(reset=True)


def _created(fn: Callable[[R | None], R | None]) -> R | None:
    """The record ``fn`` makes out of nothing, or None (``fn`` is pure: asking costs only the call)."""
    try:
        return fn(None)
    except Exception:  # e.g. "not found": fn needs the stored value
        return None


class _CreateBatcher(Generic[R]):
    """Create-only writes of one table, combined: while one transaction is in flight the next creates queue,
    and go together in the next one (at most ``MAX_BATCH`` keys, each compared to "absent"). etcd then writes
    and syncs one entry for many registrations. If any key of a batch exists, the whole transaction fails and
    every create of that batch answers None: its caller reads the key and applies its change the usual way."""

    MAX_BATCH = 64

    def __init__(self, table: Table[R]) -> None:
        self._table = table
        self._pending: list[tuple[str, R, asyncio.Future[R | None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def create(self, id: str, record: R) -> R | None:
        if any(pending_id == id for pending_id, _, _ in self._pending):
            return None  # the same new id twice at once: one transaction may not name a key twice
        fut: asyncio.Future[R | None] = asyncio.get_running_loop().create_future()
        self._pending.append((id, record, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name=f"mesh:table-creates:{self._table.name}"
            )
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        table = self._table
        while self._pending:
            batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
            try:
                revision = await table._kv.txn_cas([(table.key(i), rec.to_json(), 0) for i, rec, _ in batch])
            except BaseException as exc:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else KvUnavailable("cancelled"))
                        fut.exception()  # retrieved: its caller may be gone
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for id, rec, fut in batch:
                written = None
                if revision:
                    written = dataclasses.replace(rec, revision=revision)  # type: ignore[type-var]
                    table._apply_put(id, written)
                if not fut.done():
                    fut.set_result(written)


def _with_revision(record: R, entry: KvEntry, decode: Callable[[bytes, int], R]) -> R:
    if dataclasses.is_dataclass(record) and hasattr(record, "revision"):
        return dataclasses.replace(record, revision=entry.mod_revision)  # type: ignore[type-var]
    return decode(entry.value, entry.mod_revision)


@dataclasses.dataclass(frozen=True, slots=True)
class CasWrite(Generic[R]):
    """One write of a multi-key transaction: ``record`` (None deletes) for ``id`` in ``table``, applied only
    if the key's mod_revision is still ``expected`` (0: the key must not exist)."""

    table: Table[R]
    id: str
    record: R | None
    expected: int


async def commit_all(kv: KvClient, writes: list[CasWrite]) -> bool:
    """Apply ``writes`` in one etcd transaction, all or none (compare-and-swap on every key). On success each
    table's snapshot takes the written values at once (a late watch event can never bring back older ones).
    Returns False when any compare failed: re-read and re-plan."""
    ops = [
        (w.table.key(w.id), w.record.to_json() if w.record is not None else None, w.expected) for w in writes
    ]
    revision = await kv.txn_cas(ops)
    if not revision:
        return False
    for w in writes:
        w.table._apply_local(w.id, w.record, revision)
    return True
