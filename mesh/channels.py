"""gRPC channel and server-credential construction, in one place, so every listener and client has the same
TLS options and message-size limits. Channels are created once per target and reused (DESIGN §3). The REST
listener's TLS context (``server_ssl_context``) is built here too, from the same files and client-auth mode as
the gRPC listener, so the two ports can never disagree on who may connect."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM file paths. ``ca`` verifies the other side; ``cert``/``key`` identify this side."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert)


def closed_under_the_call() -> bool:
    """For an ``asyncio.CancelledError`` caught around a grpc.aio call: True when the call's channel was closed
    under it (grpc.aio cancels every call in flight on ``close()``), False when the current task itself is being
    cancelled. The first is a failed call: letting CancelledError out of a server handler makes gRPC send the
    client nothing, and the client waits for its whole deadline."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.enable_retries", 0),
    ]


#: Channels to peers find out fast that a peer cannot be reached: a connection attempt gives up after ~1 s
#: (gRPC's default is 20 s) and an established connection is probed every 5 s while calls are in flight, so a
#: silently cut link fails its calls within seconds instead of holding them for the whole deadline.
PEER_CHANNEL_OPTIONS = [
    ("grpc.min_reconnect_backoff_ms", 1_000),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 3_000),
]

#: A pod's server accepts its peers' keepalive pings (gRPC's default would answer them with GOAWAY).
SERVER_OPTIONS = [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 4_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def aio_channel(
    address: str,
    *,
    tls: TlsFiles | None = None,
    max_message_bytes: int = 16 << 20,
    extra_options: list[tuple[str, int]] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` (``host:port`` or ``unix:/path``), TLS when ``tls`` has a CA/cert."""
    opts = dict(channel_options(max_message_bytes))
    opts.update(extra_options or ())
    opts = list(opts.items())
    if tls is not None and tls.enabled:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca), private_key=_read(tls.key), certificate_chain=_read(tls.cert)
        )
        return grpc.aio.secure_channel(address, creds, options=opts)
    return grpc.aio.insecure_channel(address, options=opts)


CLIENT_AUTH_MODES = ("none", "optional", "require")


def add_port(
    server: grpc.aio.Server, address: str, *, tls: TlsFiles | None = None, client_auth: str = "optional"
) -> int:
    """Bind ``address`` on ``server`` with TLS when a certificate is configured. Returns the bound port.

    ``client_auth``: ``none`` (no client certificates asked for), ``optional`` (verified against ``tls.ca``
    when presented) or ``require`` (mTLS: a connection without a certificate from ``tls.ca`` is refused)."""
    if client_auth not in CLIENT_AUTH_MODES:
        raise ValueError(f"client auth {client_auth!r} is not one of {', '.join(CLIENT_AUTH_MODES)}")
    if tls is not None and tls.cert:
        if client_auth == "require" and not tls.ca:
            raise ValueError("client auth 'require' needs a CA bundle (MM_TLS_CA_PATH) to verify clients")
        creds = grpc.ssl_server_credentials(
            [(_read(tls.key), _read(tls.cert))],
            root_certificates=_read(tls.ca) if client_auth != "none" else None,
            require_client_auth=client_auth == "require",
        )
        return server.add_secure_port(address, creds)
    return server.add_insecure_port(address)


def server_ssl_context(tls: TlsFiles, client_auth: str = "optional") -> ssl.SSLContext:
    """The TLS context of an asyncio listener (the REST port) with ``add_port``'s rules: the pod's certificate,
    TLS 1.2 or later, and client certificates verified against ``tls.ca`` when ``optional`` and presented, or
    demanded when ``require``."""
    if client_auth not in CLIENT_AUTH_MODES:
        raise ValueError(f"client auth {client_auth!r} is not one of {', '.join(CLIENT_AUTH_MODES)}")
    if client_auth == "require" and not tls.ca:
        raise ValueError("client auth 'require' needs a CA bundle (MM_TLS_CA_PATH) to verify clients")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert, tls.key)
    if client_auth != "none" and tls.ca:
        ctx.load_verify_locations(cafile=tls.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "require" else ssl.CERT_OPTIONAL
    return ctx
