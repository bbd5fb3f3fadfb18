"""KvClient over TLS (with client certificates) to a real etcd serving https."""

from __future__ import annotations

import pytest

from mesh.devtools.etcd import EmbeddedEtcd, ServerTls
from mesh.errors import KvUnavailable
from mesh.kv.client import EtcdTls, KvClient
from tests.support.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_etcd(pki):
    cert, key = pki["server"]
    with EmbeddedEtcd(tls=ServerTls(cert, key, client_ca_file=pki["ca"])) as server:
        yield server


async def test_tls_with_client_certificate(tls_etcd, pki, kv_root: str):
    cert, key = pki["client"]
    kv = KvClient(tls_etcd.endpoint, tls=EtcdTls(pki["ca"], cert, key), timeout=3)
    try:
        await kv.connect()
        await kv.put(kv_root + "secure", b"yes")
        assert (await kv.get(kv_root + "secure")).value == b"yes"
    finally:
        await kv.close()


@pytest.mark.parametrize("case", ["plaintext", "wrong_ca", "no_client_cert"])
async def test_tls_is_enforced(tls_etcd, pki, case: str):
    cert, key = pki["client"]
    tls = {
        "plaintext": None,
        "wrong_ca": EtcdTls(pki["other_ca"], cert, key),
        "no_client_cert": EtcdTls(pki["ca"]),
    }[case]
    kv = KvClient(tls_etcd.endpoint, tls=tls, timeout=2)
    try:
        with pytest.raises(KvUnavailable):
            await kv.connect()
    finally:
        await kv.close()
