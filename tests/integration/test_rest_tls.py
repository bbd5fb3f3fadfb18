"""TLS on the REST listener: the pod's V2 REST port serves HTTPS with the gRPC listener's certificate and
client-auth rule (``MM_TLS_CLIENT_AUTH``), so a REST client cannot get in where a gRPC client would be refused.

One real `mesh serve` pod with a built-in runtime on the session etcd, called with urllib over a real TLS
handshake: a client with a certificate from the CA is served; one without a certificate, one trusting another
CA, and a plaintext client are refused."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request

import pytest

from tests.support.mesh_cluster import make_cluster
from tests.support.pki import make_pki
from tests.support.samples import samples  # noqa: F401  (fixture)


def _get(url: str, ctx: ssl.SSLContext | None) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
        return resp.status, json.loads(resp.read())


def _client_context(ca: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def test_rest_listener_serves_https_and_requires_client_certificates(etcd_server, samples, tmp_path):  # noqa: F811
    pki = make_pki(tmp_path)
    cert, key = pki["server"]
    client = pki["client"]
    tls_args = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"], "--tls-client-auth", "require")
    with make_cluster(
        etcd_server.endpoint, samples, pods=1, extra=tls_args, tls_ca=pki["ca"], tls_client=client
    ) as cluster:
        port = cluster.pods[0].rest_port
        assert port
        https = f"https://127.0.0.1:{port}/v2/health/live"
        assert _get(https, _client_context(pki["ca"], client)) == (200, {"live": True})
        # no client certificate: the handshake is refused (mTLS required, as on the gRPC port)
        with pytest.raises((OSError, http.client.HTTPException)):  # SSLError/URLError/reset, by TLS version
            _get(https, _client_context(pki["ca"]))
        # a client that trusts another CA does not accept the pod's certificate
        with pytest.raises(urllib.error.URLError) as err:
            _get(https, _client_context(pki["other_ca"], client))
        assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
        # plaintext HTTP to the TLS port gets no HTTP answer
        with pytest.raises((OSError, http.client.HTTPException)):
            _get(f"http://127.0.0.1:{port}/v2/health/live", None)
