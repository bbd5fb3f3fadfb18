"""``KvClient``: the mesh's only etcd client, and the only module of the pod that imports the etcd stubs.

Owns the gRPC channel to etcd, the translation of every etcd/gRPC error into ``mesh.errors`` (one table,
``_translate``), the per-call timeout, and the retry policy (``retry`` / ``RETRYABLE``) that callers wrap
around idempotent operations.

Why raw stubs: the asyncio etcd client packages open insecure channels only, deliver watch events one at a
time (losing the per-revision batches we need to apply multi-key txns atomically) and multiplex all watches on
one stream whose failure they report as a generic error. So we call etcd's gRPC API directly, through stubs
generated from etcd's own API definitions (``protos/etcd/``, ``scripts/gen_protos.sh``), on a channel we
create ourselves: insecure, or ``grpc.aio.secure_channel`` with ``ssl_channel_credentials`` built from the
``EtcdTls`` files (or PEM text). Each ``watch_prefix`` call is its own Watch stream.

``home`` is the key the connect probe and ``current_revision`` read (the cluster's root), so an etcd role
limited to that prefix is enough. Authentication (etcd with auth enabled): a username and password (``Authenticate`` on every connect, again
when etcd says the token expired), or a pre-issued token (``token``, or ``token_file`` re-read when etcd
rejects the token, so a rotated file applies). The token travels as the ``token`` call metadata.

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
from protos.etcd.authpb import auth_pb2
from protos.etcd.etcdserverpb import rpc_pb2 as rpc
from protos.etcd.etcdserverpb import rpc_pb2_grpc as rpc_grpc
from protos.etcd.mvccpb import kv_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")


#: The only errors ``retry`` retries. Deadline and connection failures both arrive as ``KvUnavailable``.
RETRYABLE: tuple[type[BaseException], ...] = (KvUnavailable,)


def _translate(exc: BaseException, what: str) -> MeshError:
    """Errors of one etcd call as mesh errors: gRPC statuses through ``mesh.errors.from_rpc_error`` (the one
    inbound table), connection-level failures as KvUnavailable. Callers ``raise _translate(e, w) from e``."""
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, asyncio.CancelledError):  # see _call_failed: the channel was closed under the call
        return KvUnavailable(f"etcd {what}: the channel closed under the call (endpoint failover)")
    if isinstance(exc, grpc.aio.AioRpcError):
        return from_rpc_error(exc, Source.ETCD, where=what)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, OSError, grpc.aio.UsageError)):
        return KvUnavailable(f"etcd {what}: {type(exc).__name__}: {exc}")
    return KvError(f"etcd {what}: {type(exc).__name__}: {exc}")


def _call_failed(exc: BaseException) -> bool:
    """Whether ``exc``, raised by an etcd call, is that call's failure (to translate) rather than this task
    being cancelled or the process stopping (to re-raise). grpc.aio raises CancelledError in every call still
    running on a channel that is closed, which ``connect`` does on failover: the watch loops and callers
    must hear "etcd unavailable, retry", not a cancellation they would take as their own and end on."""
    if isinstance(exc, Exception):
        return True
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0
    return False


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
    """TLS to etcd: CA bundle (None = system roots), optional client cert/key, optional SNI/name override.
    Each of the three is a file path, or PEM text itself (KV_STORE's embedded ``certificate``)."""

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


def _entry(kv: kv_pb2.KeyValue) -> KvEntry:
    return KvEntry(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)


def _read(path_or_pem: str | None) -> bytes | None:
    if not path_or_pem:
        return None
    if path_or_pem.lstrip().startswith("-----BEGIN"):
        return path_or_pem.encode()
    return Path(path_or_pem).read_bytes()


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
        token: str | None = None,
        token_file: str | None = None,
        home: str = "",
    ) -> None:
        self._endpoints, https = _parse_endpoints(endpoints)
        self._tls = tls if tls is not None else (EtcdTls() if https else None)
        self._timeout = timeout
        if (username is None) != (password is None):
            raise ValueError("etcd username and password must be given together")
        if sum(x is not None for x in (username, token, token_file)) > 1:
            raise ValueError("give one etcd credential: a username and password, a token, or a token file")
        self._username, self._password = username, password
        self._token, self._token_file = token, token_file
        # The key the connect probe and revision reads look at: the cluster's root, so a role that may read
        # only that prefix suffices (etcd answers PERMISSION_DENIED for any other key).
        self._home = home.encode() or b"\0"
        self._channel: grpc.aio.Channel | None = None
        self._index = 0  # endpoint the current channel points at
        self._metadata: tuple[tuple[str, str], ...] | None = None
        self._connect_lock = asyncio.Lock()
        self._needs_failover = False
        self._closed = False

    @classmethod
    def from_settings(cls, s) -> KvClient:
        """The client a pod's ``MeshSettings`` describe (endpoints, TLS, credentials, timeout)."""
        tls = None
        if s.etcd_ca or s.etcd_cert or s.etcd_server_name:
            tls = EtcdTls(
                s.etcd_ca or None, s.etcd_cert or None, s.etcd_key or None, s.etcd_server_name or None
            )
        return cls(
            s.etcd_endpoints,
            tls=tls,
            timeout=s.etcd_timeout_s,
            username=s.etcd_username or None,
            password=s.etcd_password if s.etcd_username else None,
            token=s.etcd_token or None,
            token_file=s.etcd_token_path or None,
            home=s.key_root,
        )

    def __repr__(self) -> str:  # never shows credentials
        return f"KvClient({','.join(self._endpoints)!r}, tls={self._tls is not None}, auth={self._auth_kind})"

    @property
    def _auth_kind(self) -> str:
        if self._username is not None:
            return "password"
        return "token" if (self._token or self._token_file) else "none"

    @property
    def _renewable(self) -> bool:
        """Whether a rejected token can be replaced (a password to re-authenticate, a file to re-read)."""
        return self._username is not None or self._token_file is not None

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
        """Open a channel to an endpoint that answers, probing every endpoint at once (starting with the
        current one, or the next after a failure): a member that lost quorum holds a probe for the whole
        timeout, and probing one by one would make a caller wait that long for each such member."""
        async with self._connect_lock:
            if self._closed:
                raise KvUnavailable("etcd client is closed")
            if self._channel is not None and not self._needs_failover:
                return
            start = (self._index + 1) % len(self._endpoints) if self._needs_failover else self._index
            old, self._channel = self._channel, None
            if old is not None:
                await old.close()
            order = [(start + i) % len(self._endpoints) for i in range(len(self._endpoints))]
            channels = {index: self._make_channel(self._endpoints[index]) for index in order}
            probes = {asyncio.ensure_future(self._probe(channels[index])): index for index in order}
            chosen: int | None = None
            winner_metadata: tuple[tuple[str, str], ...] | None = None
            last: BaseException | None = None
            try:
                pending = set(probes)
                while pending and chosen is None:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for probe in sorted(done, key=lambda p: order.index(probes[p])):
                        exc = probe.exception()
                        if exc is None:
                            if chosen is None:
                                chosen, winner_metadata = probes[probe], probe.result()
                        elif not isinstance(exc, KvUnavailable):
                            raise exc  # etcd answered (bad credentials, permission): the others say the same
                        else:
                            last = exc
            finally:
                for probe in probes:
                    probe.cancel()
                await asyncio.gather(*probes, return_exceptions=True)
                for index, channel in channels.items():
                    if index != chosen:
                        await channel.close()
            if chosen is None:
                raise KvUnavailable(f"no etcd endpoint reachable ({', '.join(self._endpoints)})") from last
            self._channel, self._index, self._needs_failover = channels[chosen], chosen, False
            self._metadata = winner_metadata

    def _read_token_file(self) -> str:
        try:
            token = Path(self._token_file).read_text().strip()
        except OSError as exc:
            raise KvError(f"etcd token file {self._token_file}: {exc.strerror or exc}") from None
        if not token:
            raise KvError(f"etcd token file {self._token_file} is empty")
        return token

    async def _probe(self, channel: grpc.aio.Channel) -> tuple[tuple[str, str], ...] | None:
        """Authenticate if configured, then a one-key Range to prove the endpoint serves requests. Returns the
        metadata (auth token) for calls on this channel (etcd's simple tokens are valid on their member only)."""
        metadata = None
        try:
            if self._username is not None:
                resp = await rpc_grpc.AuthStub(channel).Authenticate(
                    rpc.AuthenticateRequest(name=self._username, password=self._password),
                    timeout=self._timeout,
                )
                metadata = (("token", resp.token),)
            elif self._token_file is not None:
                metadata = (("token", self._read_token_file()),)
            elif self._token is not None:
                metadata = (("token", self._token),)
            await rpc_grpc.KVStub(channel).Range(
                rpc.RangeRequest(key=self._home, limit=1, count_only=True),
                timeout=self._timeout,
                metadata=metadata,
            )
        except BaseException as exc:
            if not _call_failed(exc):
                raise
            raise _translate(exc, "connect") from exc
        return metadata

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
            except BaseException as exc:
                if not _call_failed(exc):
                    raise
                err = _translate(exc, what)
                if attempt == 0 and self._renewable and isinstance(err, KvAuthExpired):
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
                self._metadata = await self._probe(channel)

    # --- KV -----------------------------------------------------------------------------------

    async def get(self, key: str) -> KvEntry | None:
        return (await self.get_with_revision(key))[0]

    async def get_with_revision(self, key: str) -> tuple[KvEntry | None, int]:
        """The entry (or None) and the store revision the read was served at."""
        resp = await self._call(rpc_grpc.KVStub, "Range", rpc.RangeRequest(key=key.encode()), "get")
        return (_entry(resp.kvs[0]) if resp.kvs else None), resp.header.revision

    async def get_prefix(self, prefix: str) -> tuple[list[KvEntry], int]:
        """All entries under ``prefix`` (in key order) and the header revision of that consistent read."""
        raw = prefix.encode()
        req = rpc.RangeRequest(key=raw, range_end=_prefix_end(raw))
        resp = await self._call(rpc_grpc.KVStub, "Range", req, "get_prefix")
        return [_entry(kv) for kv in resp.kvs], resp.header.revision

    async def current_revision(self) -> int:
        """The store's current revision (a count-only Range)."""
        req = rpc.RangeRequest(key=self._home, limit=1, count_only=True)
        resp = await self._call(rpc_grpc.KVStub, "Range", req, "revision")
        return resp.header.revision

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        req = rpc.PutRequest(key=key.encode(), value=value, lease=lease or 0)
        resp = await self._call(rpc_grpc.KVStub, "Put", req, "put")
        return resp.header.revision

    async def delete(self, key: str) -> bool:
        resp = await self._call(
            rpc_grpc.KVStub, "DeleteRange", rpc.DeleteRangeRequest(key=key.encode()), "delete"
        )
        return resp.deleted > 0

    async def compact(self, revision: int) -> None:
        """Compact history up to ``revision`` (operations and tests)."""
        await self._call(rpc_grpc.KVStub, "Compact", rpc.CompactionRequest(revision=revision), "compact")

    async def _txn(self, compare: list, success: list, failure: list, what: str) -> rpc.TxnResponse:
        req = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        return await self._call(rpc_grpc.KVStub, "Txn", req, what)

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
        resp = await self._call(
            rpc_grpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl), "lease_grant"
        )
        if resp.error:
            raise KvError(f"etcd lease_grant: {resp.error}")
        return resp.ID

    async def lease_keepalive_once(self, lease_id: int) -> int:
        """Refresh the lease once; returns the remaining TTL, ``<= 0`` when it has expired or is unknown."""
        if self._channel is None or self._needs_failover:
            await self.connect()
        channel = self._channel
        call = rpc_grpc.LeaseStub(channel).LeaseKeepAlive(timeout=self._timeout, metadata=self._metadata)
        try:
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
        except BaseException as exc:
            if not _call_failed(exc):
                raise
            err = _translate(exc, "lease_keepalive")
            if isinstance(err, LeaseNotFound):
                return 0
            if isinstance(err, KvAuthExpired) and self._renewable:
                await self._reauthenticate(channel)  # the caller's next try carries the new token
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
                rpc_grpc.LeaseStub, "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id), "lease_revoke"
            )
        except LeaseNotFound:
            pass

    # --- administration: users, roles, auth (dev tools, tests, operators' scripts) ------------------

    async def add_user(self, name: str, password: str) -> None:
        await self._call(
            rpc_grpc.AuthStub, "UserAdd", rpc.AuthUserAddRequest(name=name, password=password), "user add"
        )

    async def add_role(self, name: str) -> None:
        await self._call(rpc_grpc.AuthStub, "RoleAdd", rpc.AuthRoleAddRequest(name=name), "role add")

    async def grant_prefix(self, role: str, prefix: str, *, write: bool = True) -> None:
        """Let ``role`` read (and with ``write`` also write) every key under ``prefix``."""
        raw = prefix.encode()
        perm = auth_pb2.Permission(
            permType=auth_pb2.Permission.READWRITE if write else auth_pb2.Permission.READ,
            key=raw,
            range_end=_prefix_end(raw),
        )
        req = rpc.AuthRoleGrantPermissionRequest(name=role, perm=perm)
        await self._call(rpc_grpc.AuthStub, "RoleGrantPermission", req, "role grant")

    async def grant_role(self, user: str, role: str) -> None:
        req = rpc.AuthUserGrantRoleRequest(user=user, role=role)
        await self._call(rpc_grpc.AuthStub, "UserGrantRole", req, "user grant")

    async def enable_auth(self) -> None:
        """Turn authentication on (etcd needs a ``root`` user holding the ``root`` role first)."""
        await self._call(rpc_grpc.AuthStub, "AuthEnable", rpc.AuthEnableRequest(), "auth enable")

    async def auth_enabled(self) -> bool:
        resp = await self._call(rpc_grpc.AuthStub, "AuthStatus", rpc.AuthStatusRequest(), "auth status")
        return resp.enabled

    async def authenticate(self, name: str, password: str) -> str:
        """A fresh token for ``name`` (what an operator hands to ``MM_ETCD_TOKEN``)."""
        req = rpc.AuthenticateRequest(name=name, password=password)
        resp = await self._call(rpc_grpc.AuthStub, "Authenticate", req, "authenticate")
        return resp.token

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
        channel = self._channel
        call = rpc_grpc.WatchStub(channel).Watch(metadata=self._metadata)
        try:
            try:
                await call.write(rpc.WatchRequest(create_request=create))
                first = await asyncio.wait_for(call.read(), self._timeout)
            except BaseException as exc:
                if not _call_failed(exc):
                    raise
                err = _translate(exc, "watch create")
                if isinstance(err, KvAuthExpired) and self._renewable:
                    await self._reauthenticate(channel)  # the owner re-creates the watch with the new token
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
                except BaseException as exc:
                    if not _call_failed(exc):
                        raise
                    raise _translate(exc, "watch") from exc
                self._check_watch_response(resp)
                if resp.events:
                    yield [
                        WatchEvent(
                            "delete" if ev.type == kv_pb2.Event.DELETE else "put",
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
