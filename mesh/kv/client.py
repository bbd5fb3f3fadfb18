"""``KvClient``: the mesh's only etcd client, and the only module that imports ``aetcd``.

Owns the gRPC channel to etcd, the translation of every etcd/gRPC error into ``mesh.errors`` (one table,
``_translate``), the per-call timeout, and the retry policy (``retry`` / ``RETRYABLE``) that callers wrap
around idempotent operations.

Why raw stubs: ``aetcd`` 1.0 only opens insecure channels, delivers watch events one at a time (losing the
per-revision batches we need to apply multi-key txns atomically) and multiplexes all watches on one stream
whose failure it reports as a generic error. So we use only its generated protobuf stubs (``aetcd.rpc``) on a
channel we create ourselves: insecure, or ``grpc.aio.secure_channel`` with ``ssl_channel_credentials`` built
from the ``EtcdTls`` files. Each ``watch_prefix`` call is its own Watch stream.

Endpoints: one or several ``host:port`` (a comma-separated string or a sequence; ``http://``/``https://``
prefixes are accepted, ``https`` implies TLS with system roots when no ``tls`` is given). ``connect`` uses the
first endpoint that answers a cheap Range. When a call fails with UNAVAILABLE and there are several
endpoints, the next call re-runs that selection starting after the failed endpoint; open watches on the old
channel end with ``KvUnavailable`` and their owners re-create them. Credentials are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import grpc
from aetcd import rpc

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.errors import (
    KvAuthExpired,
    KvCompacted,
    KvError,
    KvUnavailable,
    LeaseNotFound,
    MeshError,
    Source,
    from_rpc_error,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


#: The only errors ``retry`` retries. Deadline and connection failures both arrive as ``KvUnavailable``.
RETRYABLE: tuple[type[BaseException], ...] = (KvUnavailable,)


def _translate(exc: BaseException, what: str) -> MeshError:
    """Errors of one etcd call as mesh errors: gRPC statuses through ``mesh.errors.from_rpc_error`` (the one
    inbound table), connection-level failures as KvUnavailable. Callers ``raise _translate(e, w) from e``."""
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError):
        return from_rpc_error(exc, Source.ETCD, where=what)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, OSError, grpc.aio.UsageError)):
        return KvUnavailable(f"etcd {what}: {type(exc).__name__}: {exc}")
    return KvError(f"etcd {what}: {type(exc).__name__}: {exc}")


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    deadline: float = 10.0,
    base: float = 0.05,
    cap: float = 1.0,
    retryable: tuple[type[BaseException], ...] = RETRYABLE,
    rng: random.Random | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> T:
    """Run ``fn()`` until it succeeds, retrying ``retryable`` errors with full-jitter exponential backoff.

    Only for idempotent operations. Gives up (re-raising the last error) once ``deadline`` seconds have passed.
    """
    end = clock.monotonic() + deadline
    rng = rng or random
    delay = base
    while True:
        try:
            return await fn()
        except retryable:
            remaining = end - clock.monotonic()
            if remaining <= 0:
                raise
            await asyncio.sleep(min(remaining, rng.uniform(0, delay)))
            delay = min(cap, delay * 2)


@dataclass(frozen=True)
class EtcdTls:
    """TLS to etcd: CA bundle (None = system roots), optional client cert/key, optional SNI/name override."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes
    mod_revision: int
    lease: int = 0


def _parse_endpoints(endpoints: str | Sequence[str]) -> tuple[list[str], bool]:
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out, https = [], False
    for item in items:
        item = item.strip()
        if item.startswith("https://"):
            https = True
        item = item.split("://", 1)[-1].rstrip("/")
        if item:
            out.append(item)
    if not out:
        raise ValueError("no etcd endpoints given")
    return out, https


def _prefix_end(prefix: bytes) -> bytes:
    buf = bytearray(prefix)
    for i in reversed(range(len(buf))):
        if buf[i] < 0xFF:
            buf[i] += 1
            return bytes(buf[: i + 1])
    return b"\0"  # all 0xff (or empty): to the end of the keyspace


def _entry(kv: rpc.KeyValue) -> KvEntry:
    return KvEntry(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def channel_credentials(tls: EtcdTls) -> grpc.ChannelCredentials:
    """Secure channel credentials from the TLS files (read now, so rotated files apply on reconnect)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


class KvClient:
    """An asyncio etcd v3 client with typed results, one error table and a timeout on every call."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        tls: EtcdTls | None = None,
        timeout: float = 5.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._endpoints, https = _parse_endpoints(endpoints)
        self._tls = tls if tls is not None else (EtcdTls() if https else None)
        self._timeout = timeout
        if (username is None) != (password is None):
            raise ValueError("etcd username and password must be given together")
        self._username, self._password = username, password
        self._channel: grpc.aio.Channel | None = None
        self._index = 0  # endpoint the current channel points at
        self._metadata: tuple[tuple[str, str], ...] | None = None
        self._connect_lock = asyncio.Lock()
        self._needs_failover = False
        self._closed = False

    def __repr__(self) -> str:  # never shows credentials
        return f"KvClient({','.join(self._endpoints)!r}, tls={self._tls is not None})"

    @property
    def endpoint(self) -> str:
        return self._endpoints[self._index]

    # --- connection ---------------------------------------------------------------------------

    def _make_channel(self, target: str) -> grpc.aio.Channel:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 10_000),  # etcd's default minimum is 5 s
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Reconnect soon after an etcd restart, and give each channel its own subchannels so a fresh
            # channel (failover, reconnect) really tries to connect instead of sharing a backed-off one.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if self._tls is None:
            return grpc.aio.insecure_channel(target, options=options)
        if self._tls.server_name:
            options.append(("grpc.ssl_target_name_override", self._tls.server_name))
        return grpc.aio.secure_channel(target, channel_credentials(self._tls), options=options)

    async def connect(self) -> None:
        """Open a channel to the first endpoint that answers (starting at the current one)."""
        async with self._connect_lock:
            if self._closed:
                raise KvUnavailable("etcd client is closed")
            if self._channel is not None and not self._needs_failover:
                return
            start = (self._index + 1) % len(self._endpoints) if self._needs_failover else self._index
            old, self._channel = self._channel, None
            if old is not None:
                await old.close()
            last: BaseException | None = None
            for i in range(len(self._endpoints)):
                index = (start + i) % len(self._endpoints)
                channel = self._make_channel(self._endpoints[index])
                try:
                    await self._probe(channel)
                except BaseException as exc:
                    await channel.close()
                    if not isinstance(exc, Exception):
                        raise
                    last = exc
                    continue
                self._channel, self._index, self._needs_failover = channel, index, False
                return
            raise KvUnavailable(f"no etcd endpoint reachable ({', '.join(self._endpoints)})") from last

    async def _probe(self, channel: grpc.aio.Channel) -> None:
        """Authenticate if configured, then a one-key Range to prove the endpoint serves requests."""
        metadata = None
        try:
            if self._username is not None:
                resp = await rpc.AuthStub(channel).Authenticate(
                    rpc.AuthenticateRequest(name=self._username, password=self._password),
                    timeout=self._timeout,
                )
                metadata = (("token", resp.token),)
            await rpc.KVStub(channel).Range(
                rpc.RangeRequest(key=b"\0", limit=1, count_only=True),
                timeout=self._timeout,
                metadata=metadata,
            )
        except Exception as exc:
            raise _translate(exc, "connect") from exc
        self._metadata = metadata

    async def close(self) -> None:
        async with self._connect_lock:
            self._closed = True
            if self._channel is not None:
                await self._channel.close()
                self._channel = None

    async def _call(
        self, stub: Callable[[grpc.aio.Channel], object], method: str, request: object, what: str
    ):
        """One unary RPC with the timeout, auth token, error translation and endpoint failover."""
        for attempt in range(2):
            if self._channel is None or self._needs_failover:
                await self.connect()
            channel = self._channel
            try:
                fn = getattr(stub(channel), method)
                return await fn(request, timeout=self._timeout, metadata=self._metadata)
            except Exception as exc:
                err = _translate(exc, what)
                if attempt == 0 and self._username is not None and isinstance(err, KvAuthExpired):
                    self._needs_failover = False
                    await self._reauthenticate(channel)
                    continue
                if isinstance(err, KvUnavailable) and len(self._endpoints) > 1 and channel is self._channel:
                    self._needs_failover = True
                raise err from exc
        raise AssertionError("unreachable")

    async def _reauthenticate(self, channel: grpc.aio.Channel | None) -> None:
        async with self._connect_lock:
            if channel is not None and channel is self._channel:
                await self._probe(channel)

    # --- KV -----------------------------------------------------------------------------------

    async def get(self, key: str) -> KvEntry | None:
        return (await self.get_with_revision(key))[0]

    async def get_with_revision(self, key: str) -> tuple[KvEntry | None, int]:
        """The entry (or None) and the store revision the read was served at."""
        resp = await self._call(rpc.KVStub, "Range", rpc.RangeRequest(key=key.encode()), "get")
        return (_entry(resp.kvs[0]) if resp.kvs else None), resp.header.revision

    async def get_prefix(self, prefix: str) -> tuple[list[KvEntry], int]:
        """All entries under ``prefix`` (in key order) and the header revision of that consistent read."""
        raw = prefix.encode()
        req = rpc.RangeRequest(key=raw, range_end=_prefix_end(raw))
        resp = await self._call(rpc.KVStub, "Range", req, "get_prefix")
        return [_entry(kv) for kv in resp.kvs], resp.header.revision

    async def current_revision(self) -> int:
        """The store's current revision (a count-only Range)."""
        req = rpc.RangeRequest(key=b"\0", limit=1, count_only=True)
        resp = await self._call(rpc.KVStub, "Range", req, "revision")
        return resp.header.revision

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        req = rpc.PutRequest(key=key.encode(), value=value, lease=lease or 0)
        resp = await self._call(rpc.KVStub, "Put", req, "put")
        return resp.header.revision

    async def delete(self, key: str) -> bool:
        resp = await self._call(rpc.KVStub, "DeleteRange", rpc.DeleteRangeRequest(key=key.encode()), "delete")
        return resp.deleted > 0

    async def compact(self, revision: int) -> None:
        """Compact history up to ``revision`` (operations and tests)."""
        await self._call(rpc.KVStub, "Compact", rpc.CompactionRequest(revision=revision), "compact")

    async def _txn(self, compare: list, success: list, failure: list, what: str) -> rpc.TxnResponse:
        req = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        return await self._call(rpc.KVStub, "Txn", req, what)

    @staticmethod
    def _mod_equals(key: bytes, revision: int) -> rpc.Compare:
        # etcd compares a missing key as mod_revision 0, so 0 means "must not exist".
        return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=revision)

    async def cas_put(
        self, key: str, value: bytes, expected_mod_revision: int, *, lease: int | None = None
    ) -> tuple[bool, KvEntry | None]:
        """Put iff the key's mod_revision is ``expected_mod_revision`` (0 = absent).

        Returns ``(True, written entry)`` or ``(False, current entry or None)``, both read inside the txn.
        """
        raw = key.encode()
        get = rpc.RequestOp(request_range=rpc.RangeRequest(key=raw))
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=raw, value=value, lease=lease or 0))
        resp = await self._txn([self._mod_equals(raw, expected_mod_revision)], [put, get], [get], "cas_put")
        kvs = resp.responses[-1].response_range.kvs
        return resp.succeeded, (_entry(kvs[0]) if kvs else None)

    async def cas_delete(self, key: str, expected_mod_revision: int) -> tuple[bool, KvEntry | None]:
        """Delete iff the key's mod_revision is ``expected_mod_revision``. ``(True, None)`` on success."""
        raw = key.encode()
        get = rpc.RequestOp(request_range=rpc.RangeRequest(key=raw))
        delete = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=raw))
        resp = await self._txn([self._mod_equals(raw, expected_mod_revision)], [delete], [get], "cas_delete")
        if resp.succeeded:
            return True, None
        kvs = resp.responses[0].response_range.kvs
        return False, (_entry(kvs[0]) if kvs else None)

    async def txn_cas(self, ops: list[tuple[str, bytes | None, int]]) -> int:
        """Atomically apply every (key, value or None to delete, expected mod_revision), or none of them.

        Returns the store revision of the write (every put key's new mod_revision), or 0 if a compare failed."""
        compare, success = [], []
        for key, value, expected in ops:
            raw = key.encode()
            compare.append(self._mod_equals(raw, expected))
            if value is None:
                success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=raw)))
            else:
                success.append(rpc.RequestOp(request_put=rpc.PutRequest(key=raw, value=value)))
        resp = await self._txn(compare, success, [], "txn_cas")
        return resp.header.revision if resp.succeeded else 0

    # --- leases -------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        resp = await self._call(rpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl), "lease_grant")
        if resp.error:
            raise KvError(f"etcd lease_grant: {resp.error}")
        return resp.ID

    async def lease_keepalive_once(self, lease_id: int) -> int:
        """Refresh the lease once; returns the remaining TTL, ``<= 0`` when it has expired or is unknown."""
        if self._channel is None or self._needs_failover:
            await self.connect()
        call = rpc.LeaseStub(self._channel).LeaseKeepAlive(timeout=self._timeout, metadata=self._metadata)
        try:
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
        except Exception as exc:
            err = _translate(exc, "lease_keepalive")
            if isinstance(err, LeaseNotFound):
                return 0
            if isinstance(err, KvUnavailable) and len(self._endpoints) > 1:
                self._needs_failover = True
            raise err from exc
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            raise KvUnavailable("etcd lease_keepalive: stream closed")
        return resp.TTL

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease (and delete its keys). An unknown lease counts as already revoked."""
        try:
            await self._call(
                rpc.LeaseStub, "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id), "lease_revoke"
            )
        except LeaseNotFound:
            pass

    # --- watch --------------------------------------------------------------------------------

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Yield batches of events under ``prefix`` from ``start_revision`` (inclusive; 0 = from now).

        The first batch is always empty and is yielded once etcd has created the watch, so a consumer can
        mark itself connected. Each later batch holds the events of one watch response (events of one
        revision are never split). Raises ``KvCompacted`` when ``start_revision`` was compacted and
        ``KvUnavailable`` when the stream breaks or the server cancels the watch. Closing the generator
        cancels the stream.
        """
        if self._channel is None or self._needs_failover:
            await self.connect()
        raw = prefix.encode()
        create = rpc.WatchCreateRequest(key=raw, range_end=_prefix_end(raw), start_revision=start_revision)
        call = rpc.WatchStub(self._channel).Watch(metadata=self._metadata)
        try:
            try:
                await call.write(rpc.WatchRequest(create_request=create))
                first = await asyncio.wait_for(call.read(), self._timeout)
            except Exception as exc:
                err = _translate(exc, "watch create")
                if isinstance(err, KvUnavailable) and len(self._endpoints) > 1:
                    self._needs_failover = True
                raise err from exc
            self._check_watch_response(first)
            if not first.created:
                raise KvUnavailable("etcd watch: unexpected first response")
            yield []
            while True:
                try:
                    resp = await call.read()
                except Exception as exc:
                    raise _translate(exc, "watch") from exc
                self._check_watch_response(resp)
                if resp.events:
                    yield [
                        WatchEvent(
                            "delete" if ev.type == rpc.Event.DELETE else "put",
                            ev.kv.key.decode(),
                            ev.kv.value,
                            ev.kv.mod_revision,
                            ev.kv.lease,
                        )
                        for ev in resp.events
                    ]
        finally:
            call.cancel()

    @staticmethod
    def _check_watch_response(resp: object) -> None:
        if resp is grpc.aio.EOF:
            raise KvUnavailable("etcd watch: stream ended")
        if resp.compact_revision:
            raise KvCompacted(resp.compact_revision)
        if resp.canceled:
            raise KvUnavailable(f"etcd watch cancelled by server: {resp.cancel_reason}")
