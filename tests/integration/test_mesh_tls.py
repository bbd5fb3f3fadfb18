"""TLS on the pod's external listener and between pods: clients and peers verify the pod certificate."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from mesh.client import MeshClient, MeshClientError
from tests.support.mesh_cluster import FAST_POD_ARGS, MeshTestCluster
from tests.support.pki import make_pki
from tests.support.samples import samples  # noqa: F401  (fixture)


def test_tls_listener_and_pod_to_pod_forwarding(etcd_server, samples, tmp_path):  # noqa: F811
    pki = make_pki(tmp_path)
    cert, key = pki["server"]
    tls_args = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"])
    m = [x for x in samples["models"] if x["group"] == "many"][9]
    inp = m["input"]
    data = np.asarray(inp["data"], np.float32).reshape(inp["shape"])
    with MeshTestCluster(
        pods=2,
        capacity=2_000_000,
        models_dir=samples["dir"],
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        pod_args=(*FAST_POD_ARGS, *tls_args),
        tls_ca=pki["ca"],
    ) as cluster:
        c0 = MeshClient(cluster.addresses[0], tls_ca=pki["ca"])
        c1 = MeshClient(cluster.addresses[1], tls_ca=pki["ca"])
        c0.register(m["id"], m["type"], m["path"])
        c0.infer(m["id"], {inp["name"]: data})
        holder = next(c["location"] for c in c0.status(m["id"])["copies"])
        other = c1 if holder == "pod-0" else c0
        out = other.infer(m["id"], {inp["name"]: data})  # forwarded to the holder over TLS
        np.testing.assert_allclose(
            np.asarray(out["predict"]).ravel(), m["expected"]["predict"]["data"], rtol=1e-4, atol=1e-5
        )
        forwarded = sum(
            cluster.metric(i, "modelmesh_requests_routed_total", 'route="forward"') for i in range(2)
        )
        assert forwarded >= 1
        # plaintext clients and clients trusting another CA are refused
        for bad in (
            MeshClient(cluster.addresses[0], timeout=3),
            MeshClient(cluster.addresses[0], tls_ca=pki["other_ca"], timeout=3),
        ):
            with pytest.raises(MeshClientError) as err:
                bad.status(m["id"])
            assert err.value.code == "UNAVAILABLE"


def test_mtls_required_refuses_clients_without_a_certificate(etcd_server, samples, tmp_path):  # noqa: F811
    """MM_TLS_CLIENT_AUTH=require: a client without a certificate from the CA is refused, even trusting the
    pod's CA; a client with one is served; the pods forward to each other with their own certificates."""
    pki = make_pki(tmp_path)
    cert, key = pki["server"]
    tls_args = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"], "--tls-client-auth", "require")
    m = [x for x in samples["models"] if x["group"] == "many"][10]
    inp = m["input"]
    data = np.asarray(inp["data"], np.float32).reshape(inp["shape"])
    client_cert, client_key = pki["client"]
    with MeshTestCluster(
        pods=2,
        capacity=2_000_000,
        models_dir=samples["dir"],
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        pod_args=(*FAST_POD_ARGS, *tls_args),
        tls_ca=pki["ca"],
        tls_client=(client_cert, client_key),
    ) as cluster:
        without = MeshClient(cluster.addresses[0], tls_ca=pki["ca"], timeout=3)
        with pytest.raises(MeshClientError) as err:
            without.status(m["id"])
        assert err.value.code == "UNAVAILABLE"
        c0, c1 = (
            MeshClient(a, tls_ca=pki["ca"], tls_cert=client_cert, tls_key=client_key)
            for a in cluster.addresses
        )
        c0.register(m["id"], m["type"], m["path"])
        c0.infer(m["id"], {inp["name"]: data})
        holder = next(c["location"] for c in c0.status(m["id"])["copies"])
        other = c1 if holder == "pod-0" else c0
        out = other.infer(m["id"], {inp["name"]: data})  # forwarded over mTLS with the pod's certificate
        np.testing.assert_allclose(
            np.asarray(out["predict"]).ravel(), m["expected"]["predict"]["data"], rtol=1e-4, atol=1e-5
        )
        assert (
            sum(cluster.metric(i, "modelmesh_requests_routed_total", 'route="forward"') for i in range(2))
            >= 1
        )
