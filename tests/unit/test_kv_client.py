"""KvClient pieces that need no server: endpoint parsing, the error table, TLS channel choice, retry."""

from __future__ import annotations

import random

import grpc
import pytest

from mesh.errors import KvAuthExpired, KvCompacted, KvUnavailable
from mesh.kv import client as client_mod
from mesh.kv.client import EtcdTls, KvClient, KvError, LeaseNotFound, _translate, retry


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, "connection refused", KvUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline", KvUnavailable),
        (grpc.StatusCode.UNKNOWN, "Stream removed", KvUnavailable),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", LeaseNotFound),
        (grpc.StatusCode.OUT_OF_RANGE, "mvcc: required revision has been compacted", KvCompacted),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided", KvError),
        (grpc.StatusCode.UNAUTHENTICATED, "invalid auth token", KvAuthExpired),
    ],
)
def test_error_table(code, details, expected):
    assert type(_translate(_rpc_error(code, details), "op")) is expected


def test_non_grpc_errors():
    assert isinstance(_translate(TimeoutError(), "op"), KvUnavailable)
    assert isinstance(_translate(ConnectionRefusedError(), "op"), KvUnavailable)
    err = KvUnavailable("x")
    assert _translate(err, "op") is err


def test_endpoints_and_repr_hide_credentials():
    kv = KvClient("http://10.0.0.1:2379, 10.0.0.2:2379", username="u", password="s3cret")
    assert kv.endpoint == "10.0.0.1:2379"
    assert "s3cret" not in repr(kv)
    assert KvClient(["https://h:1"])._tls == EtcdTls()
    with pytest.raises(ValueError):
        KvClient("")
    with pytest.raises(ValueError):
        KvClient("h:1", username="only-user")


async def test_tls_config_builds_a_secure_channel(tmp_path, monkeypatch):
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    tls = EtcdTls(
        str(tmp_path / "ca"), str(tmp_path / "cert"), str(tmp_path / "key"), server_name="etcd.local"
    )
    assert isinstance(client_mod.channel_credentials(tls), grpc.ChannelCredentials)
    opened: list[tuple[str, str, dict]] = []
    real_secure, real_insecure = grpc.aio.secure_channel, grpc.aio.insecure_channel

    def secure(target, creds, options=None):
        opened.append(("secure", target, dict(options or ())))
        return real_secure(target, creds, options=options)

    def insecure(target, options=None):
        opened.append(("insecure", target, dict(options or ())))
        return real_insecure(target, options=options)

    monkeypatch.setattr(grpc.aio, "secure_channel", secure)
    monkeypatch.setattr(grpc.aio, "insecure_channel", insecure)
    KvClient("h:1", tls=tls)._make_channel("h:1")
    KvClient("h:1")._make_channel("h:1")
    assert [(kind, target) for kind, target, _ in opened] == [("secure", "h:1"), ("insecure", "h:1")]
    assert opened[0][2]["grpc.ssl_target_name_override"] == "etcd.local"


async def test_retry_retries_only_retryable_errors_until_the_deadline():
    calls = 0

    async def flaky():
        nonlocal calls
        calls += 1
        if calls < 3:
            raise KvUnavailable("down")
        return "ok"

    assert await retry(flaky, base=0.001, rng=random.Random(1)) == "ok" and calls == 3

    async def broken():
        raise KvError("bad request")

    with pytest.raises(KvError):
        await retry(broken, base=0.001)

    async def down():
        raise KvUnavailable("down")

    with pytest.raises(KvUnavailable):
        await retry(down, deadline=0.05, base=0.001)
