"""Puller: fetch a model's files into ``<model_dir>/<model_id>/`` and hand back a LocalArtifact.

Owns the pull lifecycle; the runtime side calls ``pull`` inside loadModel and ``remove`` on unloadModel.

- Resolution (``puller.resolve``) turns (model path, model key) into a local, S3/MinIO or HTTP source.
- Local/PVC sources are never copied: the artifact path is the resolved source itself (confined to its
  root, symlinks resolved), and nothing is written under ``model_dir``.
- Remote sources: one download per model at a time (single-flight: concurrent pulls of the same model and
  source await the same task, shielded so one caller's cancellation does not stop it for the others). When
  every caller has given up (the runtime's loading timeout, a cancelled loadModel), the download is
  cancelled: nobody will use its bytes, and a slow storage must not hold a pull slot, a thread, the disk
  reservation and a temp dir for as long as it keeps sending. The files go to a temp dir, are size- and
  checksum-verified while streaming, and the dir is renamed to ``<model_dir>/<model_id>`` only when
  complete. Any failure deletes the temp dir and releases the disk reservation; other models are
  untouched; a full filesystem (ENOSPC/EDQUOT) is ``DiskFull``. A second pull of a model whose download
  is already complete (same source) returns the existing artifact without downloading again.
- All blocking work (storage clients, file I/O, hashing, sizing) runs on the named ``puller-io`` thread
  pool; the only thread-to-loop crossing is ``run_in_executor``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.ids import check_id
from mesh.redact import redact_text
from puller import confine, layout
from puller.budget import DiskBudget
from puller.confine import Root
from puller.errors import DiskFull, PullError
from puller.providers.base import Aborted, FetchPlan, Limits, Provider, check_size, with_retries
from puller.resolve import LocalSource, Source, parse_model_key, resolve
from puller.settings import PullerSettings
from puller.storage_config import StorageConfig, StorageConfigStore, StorageEntry

log = logging.getLogger("puller.pull")
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # the model directory's filesystem is full


@dataclass(eq=False)
class _Download:
    """One in-flight download of a model from one source, and how many pulls are waiting for it."""

    model_id: str
    fingerprint: str
    task: asyncio.Task[LocalArtifact]
    waiters: int = 0


@dataclass(frozen=True)
class LocalArtifact:
    model_id: str
    path: Path  # local file or directory holding the model's files (a real path, links resolved)
    disk_size_bytes: int
    root: Path | None = None
    """The root every file of the artifact must resolve inside (the local root or mount it was found in,
    or ``<model_dir>/<model_id>`` for a pulled one). Runtimes resolve the files they open through
    ``puller.confine`` against it. None: the artifact path itself (its directory for a file)."""

    def confining_root(self) -> Root:
        if self.root is not None:
            return Root.of(self.root)
        return Root.of(self.path if self.path.is_dir() else self.path.parent)


class Puller:
    def __init__(self, settings: PullerSettings) -> None:
        self._s = settings
        self._executor = ThreadPoolExecutor(
            max_workers=max(2, settings.io_threads), thread_name_prefix="puller-io"
        )
        self._store = StorageConfigStore(settings.storage_config, pvc_mounts_dir=settings.pvc_mounts_dir)
        self._inflight: dict[str, _Download] = {}
        self._pulled: dict[str, tuple[str, LocalArtifact]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pull_slots: asyncio.Semaphore | None = None
        self._providers: dict[str, Provider] = {}
        self._closed = False
        self._budget = DiskBudget(settings.disk_budget_bytes, delete=self._delete_model_dir)
        # Start-up: partial downloads of an earlier process go; complete ones become evictable leftovers.
        layout.clean_stale_temp(settings.model_dir)
        self._budget.adopt_leftovers(layout.existing_models(settings.model_dir))

    # ------------------------------------------------------------------ public API

    async def pull(
        self, model_id: str, model_path: str, model_key: str = "", model_type: str = ""
    ) -> LocalArtifact:
        """Make the model's files available locally; see the module docstring. Raises PullError subclasses."""
        if self._closed:
            raise PullError("the puller is closed")
        check_id(model_id)
        layout.check_model_dir_name(model_id)
        config = self._store.current()
        try:
            return await self._pull(model_id, model_path, model_key, model_type, config)
        except PullError as exc:
            scrub(exc, config.secrets())
            raise
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            # the download's temp dir is gone already (_download); say what happened, not "internal error"
            usage = await self._run(shutil.disk_usage, self._s.model_dir)
            raise DiskFull(model_id=model_id, free=usage.free, total=usage.total) from None

    async def _pull(
        self, model_id: str, model_path: str, model_key: str, model_type: str, config: StorageConfig
    ) -> LocalArtifact:
        key = parse_model_key(model_key)
        source = resolve(model_path, key, config, local_roots=self._s.local_roots, model_type=model_type)
        if isinstance(source, LocalSource):
            root = source.root or Root.of(source.path)
            # The whole tree is confined here (every link in it), before any runtime opens a file.
            size = await self._run(confine.tree_size, root, source.path)
            return LocalArtifact(model_id=model_id, path=source.path, disk_size_bytes=size, root=root.real)
        fp = source.fingerprint()
        while True:
            done = self._pulled.get(model_id)
            if done is not None and done[0] == fp and done[1].path.exists():
                return done[1]
            inflight = self._inflight.get(model_id)
            if inflight is None:
                task = asyncio.create_task(self._download(model_id, source), name=f"puller:pull:{model_id}")
                inflight = _Download(model_id, fp, task)
                self._inflight[model_id] = inflight
                task.add_done_callback(functools.partial(self._download_done, model_id, inflight))
            if inflight.fingerprint == fp:
                return await self._wait(inflight)
            # Another source for this id is being pulled: let it finish, then pull ours over it.
            await asyncio.wait([inflight.task])

    async def _wait(self, download: _Download) -> LocalArtifact:
        """Wait for a shared download; the last waiter to give up cancels it (module docstring)."""
        download.waiters += 1
        try:
            return await asyncio.shield(download.task)
        finally:
            download.waiters -= 1
            if download.waiters == 0 and not download.task.done():
                log.info("pull of model '%s' abandoned by every caller: stopping it", download.model_id)
                download.task.cancel()

    async def remove(self, model_id: str) -> None:
        """Delete ``<model_dir>/<model_id>`` (after any in-flight pull of it ends). Idempotent."""
        check_id(model_id)
        layout.check_model_dir_name(model_id)
        inflight = self._inflight.get(model_id)
        if inflight is not None:
            await asyncio.wait([inflight.task])
        async with self._lock(model_id):
            self._pulled.pop(model_id, None)
            await self._run(self._delete_model_dir, model_id)
            self._budget.forget(model_id)

    async def close(self) -> None:
        """Abandon in-flight downloads (their temp dirs are deleted), close clients, stop the thread pool."""
        self._closed = True
        tasks = [d.task for d in self._inflight.values()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for provider in self._providers.values():
            provider.close()
        self._providers.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ download

    async def _download(self, model_id: str, source: Source) -> LocalArtifact:
        if self._pull_slots is None:
            self._pull_slots = asyncio.Semaphore(max(1, self._s.max_concurrent_pulls))
        async with self._pull_slots:
            entry: StorageEntry = source.entry  # type: ignore[union-attr]
            provider = self._provider(entry)
            where = f"{entry.where()} ({source.describe()})"  # type: ignore[union-attr]
            plan: FetchPlan = await self._run(self._retrying, where, functools.partial(provider.plan, source))
            for obj in plan.objects:
                check_size(obj.remote, obj.size, self._s.max_object_bytes)
            tmp = await self._run(layout.new_temp_dir, self._s.model_dir)
            limits: Limits | None = None
            try:
                res = await self._run(self._budget.reserve, model_id, plan.known_bytes)
                limits = Limits(self._s.max_object_bytes, self._s.chunk_bytes, res)
                await self._fetch_all(provider, source, plan, tmp, limits, where)
                size = await self._run(layout.tree_size, tmp)
                final = layout.model_path(self._s.model_dir, model_id)
                async with self._lock(model_id):
                    await self._run(layout.commit, tmp, final)
                    self._budget.commit(res, size)
                path = final / plan.objects[0].rel if plan.single else final
                artifact = LocalArtifact(model_id=model_id, path=path, disk_size_bytes=size, root=final)
                self._pulled[model_id] = (source.fingerprint(), artifact)
                log.info(
                    "pulled model '%s' from %s: %d bytes in %d file(s)",
                    model_id,
                    where,
                    size,
                    len(plan.objects),
                )
                return artifact
            except BaseException:
                if limits is not None:
                    limits.abort.set()
                    limits.reservation.release()
                await asyncio.shield(self._run(layout.remove_tree, tmp))
                raise

    async def _fetch_all(
        self, provider: Provider, source: Source, plan: FetchPlan, tmp: Path, limits: Limits, where: str
    ) -> None:
        slots = asyncio.Semaphore(max(1, self._s.max_concurrent_files))

        async def one(obj) -> None:
            async with slots:
                limits.check()
                dest = tmp / obj.rel
                fetch = functools.partial(provider.fetch, source, obj, dest, limits)
                await self._run(self._retrying, where, fetch, limits.abort)

        tasks = [asyncio.create_task(one(o), name=f"puller:file:{o.rel}") for o in plan.objects]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            limits.abort.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            limits.abort.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, Aborted)]
            raise errors[0] if errors else failed[0].exception()  # type: ignore[misc]

    def _retrying(self, where: str, fn, abort: threading.Event | None = None):
        s = self._s
        return with_retries(
            fn, where=where, attempts=s.max_attempts, backoff_s=s.retry_backoff_s,
            backoff_max_s=s.retry_backoff_max_s, abort=abort,
        )  # fmt: skip

    # ------------------------------------------------------------------ helpers

    def _provider(self, entry: StorageEntry) -> Provider:
        name = "http" if entry.kind == "http" else entry.client
        provider = self._providers.get(name)
        if provider is None:
            from puller.providers import make_provider

            provider = make_provider(name, self._s, storage_key=entry.storage_key)
            self._providers[name] = provider
        return provider

    def _download_done(self, model_id: str, inflight: _Download, task: asyncio.Task) -> None:
        if self._inflight.get(model_id) is inflight:
            del self._inflight[model_id]
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.warning("pull of model '%s' failed: %s", model_id, redact_text(str(exc)))

    def _delete_model_dir(self, model_id: str) -> None:
        layout.remove_tree(layout.model_path(self._s.model_dir, model_id))

    def _lock(self, model_id: str) -> asyncio.Lock:
        lock = self._locks.get(model_id)
        if lock is None:
            lock = self._locks[model_id] = asyncio.Lock()
        return lock

    async def _run(self, fn, *args: Any):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))


def scrub(exc: PullError, secrets: tuple[str, ...]) -> None:
    """Make sure a failure's message (which travels to clients and logs) holds no secret of the storage
    config, whatever a library put in it. Messages are built from safe parts; this is the backstop."""
    clean = redact_text(exc.message, secrets)
    if clean != exc.message:
        exc.message = clean
        exc.args = (clean,)
