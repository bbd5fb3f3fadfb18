"""Availability: the cold path. The one object that makes a model available somewhere.

The router asks it, for a request that no ACTIVE local copy serves, where to go (``locate``); the management
API, vModel transitions, the copy scaler, the reaper and graceful shutdown ask it to load a model with no
request to carry (``ensure_loaded``, ``add_copy``). Both use the same rules, reading one immutable
``ClusterView`` per decision:

1. a copy loading here → wait for it (one load per model per pod);
2. loaded (or loading) on a live pod not excluded → that pod (a loaded copy first, power of two choices on
   published request rates);
3. loaded nowhere → the placement policy (``mesh.cluster.placement``) picks a pod, on this pod's view
   corrected by ``Reservations``. This pod loads it itself through the ``Loader`` with an *exclusive* claim,
   so concurrent misses on several pods end in one load (a lost claim hands over to the winner). Another pod
   is asked through the request itself (the router forwards it with ``mm-internal: load``) or, with no
   request, through ``PeerClient.load``.

A model that failed to load on ``max_load_failures`` pods recently is LOADING_FAILED until the records
expire. Nothing here awaits etcd except the loads themselves (their claim) and one strong read before
answering NOT_FOUND, so a model registered a moment ago on another pod is still found.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.placement import TypeConstraints, choose_copy, choose_load_target
from mesh.cluster.registry import Registry
from mesh.cluster.reservations import Reservations
from mesh.cluster.sizes import TypeSizes, planned_size
from mesh.cluster.view import ClusterView, ViewHolder
from mesh.dataplane import headers as h
from mesh.dataplane.ports import ABSENT, LOCAL, Route, RouteKind
from mesh.errors import (
    KvUnavailable,
    LoadedElsewhere,
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotHere,
    NoPlacement,
    RuntimeUnavailable,
)
from mesh.kv.records import ModelRecord
from mesh.local.cache import CacheEntry, LocalCache
from mesh.local.loader import Loader, LoadSpec
from mesh.peers import PeerClient

log = logging.getLogger(__name__)

#: Placement rounds per call: a local load that fails or loses its claim, or a pod that cannot be asked,
#: sends the decision round again with that pod excluded.
MAX_ROUNDS = 8


class Availability:
    def __init__(
        self,
        *,
        instance_id: str,
        views: ViewHolder,
        registry: Registry,
        cache: LocalCache,
        loader: Loader,
        peers: PeerClient,
        reservations: Reservations,
        constraints: TypeConstraints,
        max_load_failures: int,
        load_failure_expiry_ms: int,
        max_hops: int,
        remote_load_timeout_s: float,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        can_claim: Callable[[], bool] = lambda: True,
    ) -> None:
        self.instance_id = instance_id
        self.views = views
        self.registry = registry
        self.cache = cache
        self.loader = loader
        self.peers = peers
        self.reservations = reservations
        self.constraints = constraints
        self.max_load_failures = max_load_failures
        self.load_failure_expiry_ms = load_failure_expiry_ms
        self.max_hops = max_hops
        self.remote_load_timeout_s = remote_load_timeout_s
        self.clock = clock
        self.rng = rng or random.Random()
        # False while this pod's etcd session is down: a load here could not claim the model, so a request's
        # load goes to a peer that can (issue 12: a pod cut from etcd refused new loads at once).
        self.can_claim = can_claim
        self.type_sizes = TypeSizes()  # learned from the registry: on_record_change

    @property
    def default_size(self) -> int:
        return self.loader.default_size

    def planned_size(self, rec: ModelRecord) -> int:
        """What placement plans a copy of ``rec`` to weigh (``mesh.cluster.sizes``' order)."""
        return planned_size(
            override=rec.size_override,
            measured=rec.size,
            type_mean=self.type_sizes.predict(rec.type),
            default=self.default_size,
        )

    def on_record_change(self, model_id: str, old: ModelRecord | None, new: ModelRecord | None) -> None:
        """Registry listener: keep the per-type mean of measured sizes current."""
        if old is not None and old.size and (new is None or new.size != old.size or new.type != old.type):
            self.type_sizes.forget(old.type, old.size)
        if new is not None and new.size and (old is None or old.size != new.size or old.type != new.type):
            self.type_sizes.observe(new.type, new.size)

    # ------------------------------------------------------------------ the request path
    async def locate(
        self,
        model_id: str,
        *,
        exclude: set[str],
        internal: str = "",
        hop: int = 0,
        last_used: int,
        may_load: bool = True,
    ) -> Route:
        """Where to serve a request for ``model_id`` now. May wait for a load on this pod (then LOCAL).

        ``exclude``: pods this request already failed on (updated here when a local load fails).
        ``internal``: the request's ``mm-internal`` mode (``hit``: serve only if here; ``load``: load here
        unless another pod claimed it first). ``may_load=False``: answer ABSENT rather than load (ModelReady).
        """
        me = self.instance_id
        hinted: list[str] = []  # the winner of a claim we lost
        last_error: MeshError | None = None
        strong_checked = False
        for _ in range(MAX_ROUNDS):
            view = self.views.current
            entry = self.cache.get(model_id)
            if entry is not None and me not in exclude:
                if entry.active:
                    return LOCAL
                # An extra copy loading here: serve a client's request from a loaded copy meanwhile (a request a
                # peer sent here is never forwarded again, so it waits).
                loaded_elsewhere = (
                    None if internal else self._loaded_copy_elsewhere(view, model_id, exclude, hop)
                )
                if loaded_elsewhere is not None:
                    return loaded_elsewhere
                # loading here: wait for it with the others
                outcome = await self._attempt_here(self.loader.wait(entry), exclude)
                if outcome is None:
                    return LOCAL
                hinted, last_error = _after_attempt(outcome, hinted, last_error)
                continue
            if internal == h.INTERNAL_HIT:
                raise ModelNotHere(model_id, me)
            rec = view.model(model_id)
            if rec is None and not strong_checked:
                strong_checked = True
                rec = await self.registry.get_strong(model_id)
            if rec is None:
                raise ModelNotFound(model_id)
            if not may_load and not rec.loaded:
                return ABSENT
            if internal == h.INTERNAL_LOAD and not hinted:
                # Asked by a peer to load it here: exclusive, so a concurrent miss elsewhere that claimed it
                # first wins and the request is handed to that pod (a hit-only hop, never forwarded again).
                try:
                    await self._load_here(rec, model_id, last_used, exclusive=True, unreachable=exclude)
                    return LOCAL
                except LoadedElsewhere as exc:
                    hinted = exc.holders
                continue
            alive = view.instances
            holders = [i for i in (*hinted, *rec.instances) if i != me and i in alive and i not in exclude]
            if holders and hop < self.max_hops:
                target = choose_copy(list(dict.fromkeys(holders)), rec.loaded, alive, self.rng)
                assert target is not None
                return Route(RouteKind.FORWARD, target, view.address(target) or "", h.INTERNAL_HIT)
            now = self.clock.now_ms()
            recent = rec.recent_failures(now, self.load_failure_expiry_ms)
            if len(recent) >= self.max_load_failures:
                raise ModelLoadFailed(model_id, _failure_summary(rec.failure_messages, recent))
            target = self.pick(rec, exclude=exclude if self.can_claim() else exclude | {me}, now=now)
            if target is None and not self.can_claim():
                target = self.pick(
                    rec, exclude=exclude, now=now
                )  # only here: it fails UNAVAILABLE, as it should
            if target is None and me not in exclude and me not in recent and not alive:
                target = me  # our own record is not visible (etcd down at start): load here
            if target is None:
                if last_error is not None:
                    raise last_error
                if recent:
                    raise ModelLoadFailed(model_id, _failure_summary(rec.failure_messages, recent))
                raise NoPlacement(f"no pod can load model '{model_id}' (type {rec.type!r}): none eligible")
            if target == me or hop >= self.max_hops:
                load = self._load_here(rec, model_id, last_used, exclusive=True, unreachable=exclude)
                outcome = await self._attempt_here(load, exclude)
                if outcome is None:
                    return LOCAL
                hinted, last_error = _after_attempt(outcome, hinted, last_error)
                continue
            self.reservations.reserve(alive, target, self.planned_size(rec))
            return Route(RouteKind.FORWARD, target, view.address(target) or "", h.INTERNAL_LOAD)
        raise last_error or NoPlacement(f"could not place model '{model_id}' after {MAX_ROUNDS} rounds")

    async def forget_local(self, entry: CacheEntry, reason: str) -> None:
        """The runtime no longer has the copy ``entry`` stood for: drop it (and its registry claim), unless the
        cache already holds a newer entry for the model (a reload another request started meanwhile)."""
        await self.loader.unload(entry.model_id, reason=reason, only=entry)

    # ------------------------------------------------------------------ loads without a request
    async def ensure_loaded(
        self,
        model_id: str,
        *,
        last_used: int,
        local_only: bool = False,
        copy: bool = False,
        exclude: set[str] | None = None,
    ) -> str:
        """Load ``model_id`` on one pod unless a copy exists; returns the pod holding or loading it.

        ``local_only``: load here (a peer asked, ``mm-internal: load``); ``copy``: one more copy here even if
        others hold it (``mm-internal: copy``)."""
        me = self.instance_id
        exclude = set(exclude or ())
        last_error: MeshError | None = None
        for _ in range(MAX_ROUNDS):
            view = self.views.current
            rec = view.model(model_id) or await self.registry.get_strong(model_id)
            if rec is None:
                raise ModelNotFound(model_id)
            if local_only:
                try:
                    await self._load_here(rec, model_id, last_used, exclusive=not copy)
                except LoadedElsewhere as exc:
                    return exc.holders[0]
                return me
            alive = view.instances
            live = [i for i in rec.instances if (i in alive or i == me) and i not in exclude]
            if live:
                return live[0]
            now = self.clock.now_ms()
            recent = rec.recent_failures(now, self.load_failure_expiry_ms)
            if len(recent) >= self.max_load_failures:
                raise ModelLoadFailed(model_id, _failure_summary(rec.failure_messages, recent))
            target = self.pick(rec, exclude=exclude, now=now)
            if target is None and not alive and me not in exclude:
                target = me
            if target is None:
                raise last_error or NoPlacement(f"no pod can load model '{model_id}' (type {rec.type!r})")
            try:
                await self._load_on(target, rec, model_id, last_used, copy=False)
                return target
            except LoadedElsewhere as exc:
                return exc.holders[0]
            except MeshError as exc:
                exclude.add(target)
                last_error = exc
        raise last_error or NoPlacement(f"could not place model '{model_id}'")

    async def add_copy(self, model_id: str, *, size: int, last_used: int, exclude: set[str]) -> str | None:
        """Load one more copy of a model on a pod not in ``exclude`` (its current holders). Returns the pod,
        or None when no pod qualifies (the caller tries again on its next check) or the model already has its
        ``max_copies``."""
        view = self.views.current
        rec = view.model(model_id)
        if rec is None:
            return None
        if rec.max_copies:
            alive = view.alive()
            if sum(1 for i in rec.instances if i in alive) >= rec.max_copies:
                return None
        target = self.pick(rec, exclude=exclude | set(rec.instances), now=self.clock.now_ms(), size=size)
        if target is None:
            return None
        await self._load_on(target, rec, model_id, last_used, copy=True, size=size)
        log.info("added a copy of %s on %s", model_id, target)
        return target

    # ------------------------------------------------------------------ helpers
    def _loaded_copy_elsewhere(
        self, view: ClusterView, model_id: str, exclude: set[str], hop: int
    ) -> Route | None:
        """A FORWARD to a live pod that has ``model_id`` LOADED (not just claimed), if any and hops remain."""
        rec = view.model(model_id)
        if rec is None or hop >= self.max_hops:
            return None
        me, alive = self.instance_id, view.instances
        ready = [i for i in rec.loaded if i != me and i in alive and i not in exclude]
        if not ready:
            return None
        target = choose_copy(ready, rec.loaded, alive, self.rng)
        assert target is not None
        return Route(RouteKind.FORWARD, target, view.address(target) or "", h.INTERNAL_HIT)

    async def _attempt_here(self, load: Awaitable[object], exclude: set[str]) -> list[str] | MeshError | None:
        """Run a load on this pod (or wait for one). None: the copy is here. A list of pods: another pod won
        the claim, serve there. A MeshError: it failed here (the runtime, or etcd for the claim), and this pod
        is now in ``exclude`` so the request goes to a copy elsewhere or a load on another pod."""
        try:
            await load
            return None
        except LoadedElsewhere as exc:
            return exc.holders
        except (ModelLoadFailed, RuntimeUnavailable, KvUnavailable) as exc:
            exclude.add(self.instance_id)
            return exc

    def pick(self, rec: ModelRecord, *, exclude: set[str], now: int, size: int = 0) -> str | None:
        """The pod that should load (another copy of) ``rec``: the placement policy on this pod's view
        corrected by its reservations, skipping ``exclude`` and pods where the model failed recently."""
        recent = rec.recent_failures(now, self.load_failure_expiry_ms)
        return choose_load_target(
            self.reservations.adjust(self.views.current.instances),
            model_type=rec.type,
            size=size or self.planned_size(rec),
            exclude=exclude | set(recent),
            constraints=self.constraints,
            rng=self.rng,
            now_ms=now,
        )

    async def _load_here(
        self,
        rec: ModelRecord,
        model_id: str,
        last_used: int,
        *,
        exclusive: bool,
        unreachable: set[str] | frozenset[str] = frozenset(),
        evict: bool = True,
    ) -> None:
        spec = LoadSpec(
            type=rec.type,
            path=rec.path,
            key=rec.key,
            known_size=rec.size,
            size_override=rec.size_override,
            type_mean=self.type_sizes.predict(rec.type),
            # what the registry knows of its use, for the eviction policy (its last use, if a copy went)
            seen=(1, rec.last_used) if rec.last_unload else None,
            evict=evict,
        )
        await self.loader.ensure_local(
            model_id, spec, last_used=last_used, exclusive=exclusive, unreachable=frozenset(unreachable)
        )

    async def _load_on(
        self, target: str, rec: ModelRecord, model_id: str, last_used: int, *, copy: bool, size: int = 0
    ) -> None:
        if target == self.instance_id:
            await self._load_here(rec, model_id, last_used, exclusive=not copy)
            return
        view = self.views.current
        address = view.address(target)
        if not address:
            raise NoPlacement(f"peer {target} has no address")
        self.reservations.reserve(view.instances, target, size or self.planned_size(rec))
        await self.peers.load(
            target, address, model_id, last_used=last_used, copy=copy, timeout=self.remote_load_timeout_s
        )

    # ------------------------------------------------------------------ proactive loads (the leader)
    async def fill(self, model_id: str, target: str, *, last_used: int) -> None:
        """Load a model with no copy on ``target`` into spare room only (a proactive load: it never evicts,
        and it loses to any concurrent claim). Raises CapacityExhausted when the room is gone."""
        rec = self.views.current.model(model_id)
        if rec is None:
            return
        if target == self.instance_id:
            await self._load_here(rec, model_id, last_used, exclusive=True, evict=False)
            return
        view = self.views.current
        address = view.address(target)
        if not address:
            raise NoPlacement(f"peer {target} has no address")
        self.reservations.reserve(view.instances, target, self.planned_size(rec))
        await self.peers.load(
            target, address, model_id, last_used=last_used, fill=True, timeout=self.remote_load_timeout_s
        )


def _after_attempt(
    outcome: list[str] | MeshError, hinted: list[str], last_error: MeshError | None
) -> tuple[list[str], MeshError | None]:
    """(hinted holders, last error) after a local attempt that did not leave a copy here."""
    if isinstance(outcome, list):
        return outcome, last_error
    return hinted, outcome


def _failure_summary(messages: dict[str, str], recent: dict[str, int]) -> str:
    texts = list(dict.fromkeys(messages.get(i, "unknown error") for i in recent))
    return "; ".join(texts) if texts else "load failed"
