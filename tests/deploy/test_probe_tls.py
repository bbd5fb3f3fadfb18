"""The exec probe of overlays/tls (`python -m mesh.health check` over TLS, as the manifests run it) against a
real pod serving TLS: it succeeds only with the right CA and the name the certificate carries, for both the
readiness and the liveness service."""

from __future__ import annotations

import subprocess
import sys
import uuid

from mesh.health import LIVENESS_SERVICE
from tests.support.mesh_cluster import FAST_POD_ARGS, MeshTestCluster
from tests.support.pki import make_pki
from tests.support.samples import samples  # noqa: F401  (fixture)


def probe(*argv: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mesh.health", "check", *argv], capture_output=True, text=True, timeout=60
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_tls_exec_probe(etcd_server, samples, tmp_path):  # noqa: F811
    pki = make_pki(tmp_path)
    cert, key = pki["server"]
    with MeshTestCluster(
        pods=1,
        capacity=2_000_000,
        models_dir=samples["dir"],
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        pod_args=(*FAST_POD_ARGS, "--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"]),
        tls_ca=pki["ca"],
    ) as cluster:
        port = cluster.addresses[0].rpartition(":")[2]
        address = ("--address", f"127.0.0.1:{port}")
        good = (*address, "--tls-ca", pki["ca"], "--server-name", "localhost")
        assert probe(*good) == (0, f"127.0.0.1:{port} service '': SERVING\n")
        rc, out = probe(*good, "--service", LIVENESS_SERVICE)
        assert rc == 0 and "SERVING" in out
        rc, out = probe(*address, "--tls-ca", pki["ca"], "--server-name", "modelmesh")  # not in the cert
        assert rc == 1 and "UNAVAILABLE" in out
        rc, out = probe(*address, "--tls-ca", pki["other_ca"], "--server-name", "localhost")
        assert rc == 1
        rc, out = probe(*address)  # plaintext against TLS
        assert rc == 1
        rc, out = probe(*good, "--service", "no-such-service")
        assert rc == 1 and "NOT_FOUND" in out
