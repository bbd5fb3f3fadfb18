"""TLS on the pod's external listener and between pods: clients and peers verify the pod certificate.
(Two in-process pods with TLS settings; moved from the subprocess suite.)"""

from __future__ import annotations

from tests.inprocess.conftest import Failed, load_on, outcome
from tests.support.inprocess import PodClient
from tests.support.pki import make_pki


async def test_tls_listener_and_pod_to_pod_forwarding(cluster, tmp_path) -> None:
    pki = make_pki(tmp_path)
    cert, key = pki["server"]
    tls = {"tls_cert": cert, "tls_key": key, "tls_ca": pki["ca"]}
    mesh = await cluster(pods=2, settings=tls, client_tls_ca=pki["ca"])
    await mesh[0].client.register("m")
    await load_on(mesh, 0, "m")
    served = await mesh[1].client.infer("m")  # forwarded to the holder over TLS
    assert (served.model, served.runtime) == ("m", "pod-0")
    assert mesh[1].metric("modelmesh_requests_routed_total", route="forward") == 1
    # plaintext clients and clients trusting another CA are refused
    for bad in (PodClient(mesh[0].address, 3), PodClient(mesh[0].address, 3, tls_ca=pki["other_ca"])):
        try:
            got = await outcome(bad.status("m"))
            assert isinstance(got, Failed) and got.code == "UNAVAILABLE", got
        finally:
            await bad.close()
