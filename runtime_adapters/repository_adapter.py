"""RepositoryAdapter: a ``RuntimeAdapter`` for model servers driven through the V2 repository extension.

Shared by the MLServer and Triton adapters, which differ only in the model-repository layout they write
(``write_layout``) and in whether the adapter starts the server. This module owns the loaded-model table,
the load/unload flow, sizing and the server's up/down state:

- load: write ``<repo>/<folder>/...`` for the pulled artifact (executor thread), then RepositoryModelLoad
  under the load lock, sampling the server's process-tree memory before and after. Loads are serialised
  for measurement only (``loading_concurrency`` > 1 still pulls in parallel); a load whose lock wait runs
  out is reported unmeasured.
- size = the RSS delta (+ the device-memory delta when the model sits on a GPU), through
  ``sizing.SizeModel.measured``: a delta <= 0 or an unmeasured load falls back to disk x the type's
  learned multiplier, and genuine measurements teach the multiplier used by ``predict_size``. The first
  load of each type after a server (re)start is treated as unmeasured: it also pays the import of the
  type's libraries inside the server, which stays after the model goes.
- a load cancelled by the servicer (deadline, client cancel) leaves the server possibly still loading:
  ``unload`` of a model that is not in the table still sends RepositoryModelUnload and removes the
  folder, and a short sweep unloads the model again if the abandoned load finishes later.
- server down (``server_down``: the supervised process exited, or a health poll failed): every model is
  dropped from the table (the server lost them), the state is FAILING and loads fail UNAVAILABLE (a
  retryable status); the mesh then gets NOT_FOUND from the restarted server and reloads on demand.
  ``server_up`` also reconciles with RepositoryIndex, so a server that kept its models keeps them here.
  A load whose layout was under way when the server went down (``server_down`` removes every folder,
  the one being written included) fails UNAVAILABLE too, never as a failure of the model: each down
  starts a new server epoch, and a layout error from an earlier epoch is the server's, not the model's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mesh.errors import ModelLoadFailed, RuntimeUnavailable
from puller.confine import Root
from runtime_adapters.base import AdapterState, AdapterStatus, RuntimeAdapter
from runtime_adapters.errors import ModelNotLoaded, UnsupportedModelType
from runtime_adapters.sizing import Measurement, SizeModel
from runtime_adapters.v2_repository import ProcessTreeMeter, V2RepositoryClient, delta

if TYPE_CHECKING:
    from puller.pull import LocalArtifact

log = logging.getLogger("runtime_adapters.repository")

V2_SERVICE = "inference.GRPCInferenceService"
ABANDONED_SWEEP_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class LayoutProblem(Exception):
    """The artifact cannot be laid out for this server; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class RepoModel:
    model_id: str
    model_type: str
    folder: Path
    size: Measurement
    device_bytes: int
    disk_size_bytes: int
    load_seconds: float


class RepositoryAdapter(RuntimeAdapter):
    """Subclasses set ``server_name``, ``aliases`` (requested type -> canonical) and ``write_layout``."""

    server_name = "v2"
    aliases: dict[str, str] = {}

    def __init__(
        self,
        *,
        client: V2RepositoryClient,
        repo_dir: Path,
        capacity_bytes: int,
        sizes: SizeModel,
        meter: ProcessTreeMeter | None,
        runtime_version: str = "",
        load_rpc_timeout_s: float = 90.0,
        measure_wait_s: float = 30.0,
        method_names: tuple[str, ...] = ("ModelInfer", "ModelMetadata"),
    ) -> None:
        self.client = client
        self.repo_dir = repo_dir
        self.capacity_bytes = capacity_bytes
        self.sizes = sizes
        self.meter = meter
        self.runtime_version = runtime_version
        self.load_rpc_timeout_s = load_rpc_timeout_s
        self.measure_wait_s = measure_wait_s
        self.method_names = method_names
        self._models: dict[str, RepoModel] = {}
        self._state = AdapterState.STARTING
        self._message = "starting"
        self._warm_types: set[str] = set()
        self._measure_lock = asyncio.Lock()
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rt-repo-io")
        self._sweeps: set[asyncio.Task] = set()
        self._server_version = ""
        self._server_epoch = 0  # server_down calls so far: a load that spans one lost its folder
        repo_dir.mkdir(parents=True, exist_ok=True)
        self._remove_all_folders()  # left by an earlier run; the server is told to unload them in server_up

    # -- subclass hooks ---------------------------------------------------------------------------------

    @abstractmethod
    def write_layout(
        self, model_id: str, model_type: str, artifact_path: Path, folder: Path, root: Root | None = None
    ) -> None:
        """Blocking: create ``folder`` (``<repo>/<model_id>``) for the server; raise LayoutProblem. Every
        artifact path read or linked is resolved inside ``root`` first (``puller.confine``)."""

    # -- server state (called by the supervisor or the health poller) ---------------------------------------

    @property
    def server_is_up(self) -> bool:
        return self._state is AdapterState.READY

    def server_down(self, reason: str) -> list[str]:
        """The server is gone (or unreachable): forget every model it held. Returns the dropped ids."""
        lost = list(self._models)
        self._server_epoch += 1
        self._models.clear()
        self._warm_types.clear()
        was_ready = self._state is AdapterState.READY
        self._state = (
            AdapterState.FAILING if was_ready or self._state is AdapterState.FAILING else self._state
        )
        self._message = reason
        if lost or was_ready:
            log.error("%s is down (%s): %d loaded model(s) lost: %s", self.server_name, reason, len(lost),
                      ", ".join(lost[:10]))  # fmt: skip
        self._remove_all_folders()
        return lost

    async def server_up(self) -> None:
        """The server answers ready again: reconcile the table with RepositoryIndex and accept loads."""
        self._server_version = await self.client.version()
        try:
            states = await self.client.index()
        except RuntimeUnavailable:
            states = {}
        for model_id in [m for m in self._models if states.get(m) != "READY"]:
            log.warning("%s no longer has model %s loaded; dropping it", self.server_name, model_id)
            self._models.pop(model_id, None)
        for name in [n for n, state in states.items() if state == "READY" and n not in self._models]:
            log.warning(
                "%s holds model %s that this adapter did not load; unloading it", self.server_name, name
            )
            with contextlib.suppress(RuntimeUnavailable, ModelLoadFailed):
                await self.client.unload(name)
        self._state = AdapterState.READY
        self._message = ""
        log.info("%s %s is ready at %s", self.server_name, self._server_version, self.client.address)

    def _remove_all_folders(self) -> None:
        if not self.repo_dir.is_dir():
            return
        for child in self.repo_dir.iterdir():
            if child.is_dir() and not child.name.startswith("."):
                shutil.rmtree(child, ignore_errors=True)

    # -- RuntimeAdapter ---------------------------------------------------------------------------------

    def supported_types(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.aliases.values())))

    def canonical_type(self, model_type: str) -> str:
        parts = [p for p in model_type.strip().lower().split(":") if p]
        if parts and parts[0] == "mt":
            parts = parts[1:]
        name = self.aliases.get(parts[0]) if parts else None
        if name is None:
            raise UnsupportedModelType(model_type=model_type, supported=self.supported_types())
        return name

    async def status(self) -> AdapterStatus:
        version = self.runtime_version or self._server_version or self.server_name
        return AdapterStatus(self._state, self.capacity_bytes, version, self._message)

    async def load(self, model_id: str, model_type: str, artifact: LocalArtifact, model_key: str) -> int:
        existing = self._models.get(model_id)
        if existing is not None:
            return existing.size.size_bytes
        self._check_up()
        epoch = self._server_epoch
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        folder = self.repo_dir / model_id
        try:
            await loop.run_in_executor(self._io, self._layout, model_id, model_type, artifact, folder)
        except LayoutProblem as exc:
            raise ModelLoadFailed(model_id, str(exc)) from exc
        except OSError:
            self._check_same_server(epoch, model_id, "being laid out")  # server_down removed the folder
            raise
        rss_delta, device_delta = await self._load_measured(model_id, model_type)
        # the server died (or died and came back) during the load: the model is not there
        self._check_same_server(epoch, model_id, "loading")
        size = self.sizes.measured(model_type, artifact.disk_size_bytes, rss_delta)
        device = max(0, device_delta or 0)
        entry = RepoModel(
            model_id, model_type, folder, size, device, artifact.disk_size_bytes, time.monotonic() - started
        )
        self._models[model_id] = entry
        log.info(
            "loaded model %s (%s) into %s in %.3fs: %d bytes (%s, rss delta %s, device delta %s, disk %d)",
            model_id, model_type, self.server_name, entry.load_seconds, size.size_bytes + device, size.source,
            rss_delta, device_delta, artifact.disk_size_bytes,
        )  # fmt: skip
        return size.size_bytes + device

    def _layout(self, model_id: str, model_type: str, artifact: LocalArtifact, folder: Path) -> None:
        if folder.exists():
            shutil.rmtree(folder)
        try:
            self.write_layout(model_id, model_type, Path(artifact.path), folder, artifact.confining_root())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def _load_measured(self, model_id: str, model_type: str) -> tuple[int | None, int | None]:
        """RepositoryModelLoad under the measurement lock; (rss delta, device delta) or Nones."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._measure_lock.acquire(), self.measure_wait_s)
        except TimeoutError:
            await self.client.load(model_id, model_id, timeout=self.load_rpc_timeout_s)
            return None, None
        try:
            before = await loop.run_in_executor(self._io, self.meter.sample) if self.meter else None
            await self.client.load(model_id, model_id, timeout=self.load_rpc_timeout_s)
            after = await loop.run_in_executor(self._io, self.meter.sample) if self.meter else None
        finally:
            self._measure_lock.release()
        if model_type not in self._warm_types:
            self._warm_types.add(model_type)
            return None, None  # includes the server's import of the type's libraries
        return delta(before, after)

    def _check_same_server(self, epoch: int, model_id: str, stage: str) -> None:
        """The server this load began on (``epoch``) is still the one up; else the load fails UNAVAILABLE, as
        the server's outage (retried by the mesh), not as a failure of the model."""
        if self._server_epoch != epoch or self._state is not AdapterState.READY:
            reason = self._message or self._state.name
            raise RuntimeUnavailable(f"{self.server_name} went down while {model_id} was {stage} ({reason})")

    def _check_up(self) -> None:
        if self._state is not AdapterState.READY:
            raise RuntimeUnavailable(f"{self.server_name} is not ready ({self._message or self._state.name})")

    async def unload(self, model_id: str) -> bool:
        entry = self._models.pop(model_id, None)
        if self.server_is_up:
            try:
                await self.client.unload(model_id)
            except RuntimeUnavailable as exc:
                log.warning("unloading %s: %s", model_id, exc)  # the server lost it anyway
        if entry is None and self.server_is_up:
            self._sweep_abandoned(model_id)
        await asyncio.get_running_loop().run_in_executor(
            self._io, shutil.rmtree, self.repo_dir / model_id, True
        )
        if entry is not None:
            log.info("unloaded model %s from %s", model_id, self.server_name)
        return entry is not None

    def _sweep_abandoned(self, model_id: str) -> None:
        """A load that was cancelled may still finish inside the server; unload it if it does."""
        task = asyncio.create_task(self._sweep(model_id), name=f"rt:sweep:{model_id}")
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def _sweep(self, model_id: str) -> None:
        for wait in ABANDONED_SWEEP_S:
            await asyncio.sleep(wait)
            if model_id in self._models or not self.server_is_up:
                return  # loaded again on purpose, or the server restarted (and lost it)
            with contextlib.suppress(RuntimeUnavailable):
                if (await self.client.index()).get(model_id) == "READY":
                    log.warning("unloading %s: its cancelled load finished in %s", model_id, self.server_name)
                    with contextlib.suppress(RuntimeUnavailable, ModelLoadFailed):
                        await self.client.unload(model_id)
                    return

    def loaded_models(self) -> list[str]:
        return list(self._models)

    def predict_size(self, model_type: str, disk_size_bytes: int | None) -> int:
        return self.sizes.predict(model_type, disk_size_bytes)

    def model_size(self, model_id: str) -> int:
        entry = self._models.get(model_id)
        if entry is None:
            raise ModelNotLoaded(model_id)
        return entry.size.size_bytes + entry.device_bytes

    def model(self, model_id: str) -> RepoModel | None:
        return self._models.get(model_id)

    def method_infos(self) -> dict[str, list[int]]:
        return {f"{V2_SERVICE}/{m}": [1] for m in self.method_names}

    async def close(self) -> None:
        for task in list(self._sweeps):
            task.cancel()
        await asyncio.gather(*self._sweeps, return_exceptions=True)
        self._io.shutdown(wait=False, cancel_futures=True)
        await self.client.close()


async def poll_health(adapter: RepositoryAdapter, *, interval_s: float = 1.0, failures: int = 3) -> None:
    """For a server the adapter did not start: mark it down after ``failures`` failed ServerReady polls in a
    row, and up again when it answers. Runs until cancelled."""
    failed = 0
    while True:
        if await adapter.client.ready(timeout=max(0.5, interval_s)):
            failed = 0
            if not adapter.server_is_up:
                await adapter.server_up()
        else:
            failed += 1
            if failed >= failures and adapter.server_is_up:
                adapter.server_down(f"{adapter.client.address} not ready for {failed} polls")
        await asyncio.sleep(interval_s)
