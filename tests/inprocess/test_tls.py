"""TLS on the pod's external listener and between pods: clients and peers verify the pod certificate, and
with MM_TLS_CLIENT_AUTH=require the pod verifies theirs. Two in-process pods with TLS settings (moved from the
subprocess suite); the client is the synchronous Python client, run in a worker thread."""

from __future__ import annotations

import asyncio

import pytest

from mesh.client import MeshClient, MeshClientError
from mesh.devtools.cluster import health_serving
from tests.inprocess.conftest import load_on
from tests.support.pki import make_pki


async def test_tls_listener_and_pod_to_pod_forwarding(cluster, tmp_path) -> None:
    pki = make_pki(tmp_path)
    cert, key = pki["server"]
    tls = {"tls_cert": cert, "tls_key": key, "tls_ca": pki["ca"]}
    mesh = await cluster(pods=2, settings=tls, client_tls_ca=pki["ca"])
    await mesh[0].client.register("m")
    await load_on(mesh, 0, "m")
    with MeshClient(mesh[1].address, tls_ca=pki["ca"], timeout=20) as client:
        await asyncio.to_thread(client.infer, "m", [[1.0]])  # forwarded to the holder over TLS
    assert mesh[0].runtime.served["m"] == 1
    assert mesh[1].metric("modelmesh_requests_routed_total", route="forward") == 1
    # `mesh up` waits for TLS pods with a health check that verifies them with the CA
    assert await asyncio.to_thread(health_serving, mesh[0].address, 5.0, pki["ca"])
    assert not await asyncio.to_thread(health_serving, mesh[0].address, 1.0)  # plaintext: no answer
    # plaintext clients and clients trusting another CA are refused
    for bad in (
        MeshClient(mesh[0].address, timeout=3),
        MeshClient(mesh[0].address, tls_ca=pki["other_ca"], timeout=3),
    ):
        with bad, pytest.raises(MeshClientError) as err:
            await asyncio.to_thread(bad.status, "m")
        assert err.value.code == "UNAVAILABLE"


async def test_mtls_required_refuses_clients_without_a_certificate(cluster, tmp_path) -> None:
    """MM_TLS_CLIENT_AUTH=require: a client without a certificate from the CA is refused, even trusting the
    pod's CA; a client with one is served; the pods forward to each other with their own certificates."""
    pki = make_pki(tmp_path)
    cert, key = pki["server"]
    client_cert, client_key = pki["client"]
    tls = {"tls_cert": cert, "tls_key": key, "tls_ca": pki["ca"], "tls_client_auth": "require"}
    mesh = await cluster(
        pods=2, settings=tls, client_tls_ca=pki["ca"], client_tls_cert=(client_cert, client_key)
    )
    without = MeshClient(mesh[0].address, tls_ca=pki["ca"], timeout=3)
    with without, pytest.raises(MeshClientError) as err:
        await asyncio.to_thread(without.status, "m")
    assert err.value.code == "UNAVAILABLE"
    await mesh[0].client.register("m")
    await load_on(mesh, 0, "m")
    with MeshClient(
        mesh[1].address, tls_ca=pki["ca"], tls_cert=client_cert, tls_key=client_key, timeout=20
    ) as client:
        await asyncio.to_thread(client.infer, "m", [[1.0]])  # forwarded over mTLS with the pod's certificate
    assert mesh[0].runtime.served["m"] == 1
    assert mesh[1].metric("modelmesh_requests_routed_total", route="forward") == 1
