"""S3 through boto3: HEAD/list to plan, streaming GET to disk, S3 error codes mapped to puller errors.

Owns the boto3 side of S3. One client per storage entry (keyed by the entry fingerprint, so a changed
secret builds a new client); clients are thread-safe and used only from ``puller-io`` threads. botocore's
own retries are off (one attempt): ``with_retries`` in base.py is the single retry policy, so attempts do
not multiply. Endpoints other than AWS use path-style addressing (MinIO, moto, Ceph).

Plan: a key not ending in ``/`` is HEAD-ed first; if that object exists it is the artifact (one file,
named by the key's last component). Otherwise every object under ``<key>/`` is pulled, keeping the
structure below the prefix (directory-marker objects skipped; an empty key means the whole bucket).
``model`` therefore never matches ``model-v2/…``. ETags without ``-`` are MD5s and are checked, except
for SSE-KMS / SSE-C objects whose ETag is not an MD5.
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from puller.errors import AccessDenied, ArtifactNotFound, BucketNotFound, PullError, TruncatedDownload
from puller.providers.base import (
    FetchPlan,
    Limits,
    ObjectPlan,
    Transient,
    ca_bundle,
    check_size,
    safe_rel,
    stream_to_file,
)
from puller.resolve import ObjectSource
from puller.settings import PullerSettings
from puller.storage_config import StorageEntry

DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken", "InvalidToken",
     "AllAccessDisabled", "AccountProblem"}
)  # fmt: skip
TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
     "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}
)  # fmt: skip
_NETWORK_ERRORS = (
    bce.EndpointConnectionError,
    bce.ConnectTimeoutError,
    bce.ReadTimeoutError,
    bce.ConnectionClosedError,
    bce.ProxyConnectionError,
    bce.SSLError,
    bce.HTTPClientError,
)


def md5_from_etag(etag: str | None) -> str | None:
    """The MD5 a single-part upload's ETag carries, or None (multipart ETags end in ``-<parts>``)."""
    if not etag:
        return None
    etag = etag.strip('"')
    if "-" in etag or len(etag) != 32:
        return None
    return etag.lower()


def prefix_plan(
    objects: list[ObjectPlan],
    head_denied: Exception | None,
    classify_error,
    *,
    entry: StorageEntry,
    bucket: str,
    key: str,
) -> FetchPlan:
    """The plan for a prefix listing (boto3 or MinIO): its objects, or why there are none. A denied HEAD on
    the key explains an empty listing better than "not found" (no permission to see it)."""
    if not objects and head_denied is not None:
        raise classify_error(head_denied, entry=entry, bucket=bucket, key=key) from head_denied
    if not objects:
        raise ArtifactNotFound(where=entry.where(), path=f"s3://{bucket}/{key}")
    return FetchPlan(objects=tuple(objects), single=False)


def classify(exc: Exception, *, entry: StorageEntry, bucket: str, key: str) -> Exception:
    """Map a botocore exception to a puller error (or Transient to retry). Never includes secrets."""
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in DENIED_CODES:
            return AccessDenied(where=entry.where(), code=code if code != "403" else "HTTP 403")
        if code == "NoSuchBucket":
            return BucketNotFound(storage_key=entry.storage_key, bucket=bucket)
        if code in ("NoSuchKey", "404"):
            return ArtifactNotFound(where=entry.where(), path=f"s3://{bucket}/{key}")
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return Transient(f"{code or status}")
        return PullError(f"{entry.where()} refused s3://{bucket}/{key}: {code or status}")
    if isinstance(exc, _NETWORK_ERRORS):
        return Transient(f"cannot connect ({type(exc).__name__})", unreachable=_no_answer(exc))
    if isinstance(exc, bce.NoCredentialsError):
        return AccessDenied(where=entry.where(), code="no credentials configured")
    return exc


class Boto3Provider:
    def __init__(self, settings: PullerSettings) -> None:
        self._s = settings
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()

    def client(self, entry: StorageEntry):
        fp = entry.client_fingerprint()
        with self._lock:
            c = self._clients.get(fp)
            if c is None:
                c = self._clients[fp] = self._make_client(entry)
            return c

    def _make_client(self, entry: StorageEntry):
        cfg = Config(
            connect_timeout=self._s.connect_timeout_s,
            read_timeout=self._s.read_timeout_s,
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"} if entry.endpoint_url else {},
            max_pool_connections=max(10, self._s.max_concurrent_files * self._s.max_concurrent_pulls),
        )
        kwargs: dict = {"config": cfg, "region_name": entry.region or "us-east-1"}
        if entry.endpoint_url:
            kwargs["endpoint_url"] = entry.endpoint_url
        if entry.access_key_id or entry.secret_access_key:
            kwargs["aws_access_key_id"] = entry.access_key_id
            kwargs["aws_secret_access_key"] = entry.secret_access_key
        verify = ca_bundle(entry.certificate, self._s.model_dir)
        if verify:
            kwargs["verify"] = verify
        return boto3.session.Session().client("s3", **kwargs)

    def plan(self, source: ObjectSource) -> FetchPlan:
        entry, bucket, key = source.entry, source.bucket, source.key
        client = self.client(entry)
        head_denied: Exception | None = None
        try:
            if key and not key.endswith("/"):
                try:
                    head = client.head_object(Bucket=bucket, Key=key)
                except bce.ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    if code == "403":  # HEAD has no body: let the listing name the exact error code
                        head_denied = exc
                    elif code not in ("404", "NoSuchKey"):
                        raise
                else:
                    obj = ObjectPlan(
                        remote=key, rel=safe_rel(PurePosixPath(key).name, remote=key),
                        size=int(head["ContentLength"]), md5=_verifiable_md5(head),
                    )  # fmt: skip
                    return FetchPlan(objects=(obj,), single=True)
            prefix = key.rstrip("/") + "/" if key else ""
            objects: list[ObjectPlan] = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    k = item["Key"]
                    if k.endswith("/"):
                        continue
                    rel = safe_rel(k[len(prefix) :], remote=k)
                    objects.append(
                        ObjectPlan(
                            remote=k, rel=rel, size=int(item["Size"]), md5=md5_from_etag(item.get("ETag"))
                        )
                    )
        except Exception as exc:
            raise classify(exc, entry=entry, bucket=bucket, key=key) from exc
        return prefix_plan(objects, head_denied, classify, entry=entry, bucket=bucket, key=key)

    def fetch(self, source: ObjectSource, obj: ObjectPlan, dest: Path, limits: Limits) -> None:
        entry, bucket = source.entry, source.bucket
        client = self.client(entry)
        try:
            resp = client.get_object(Bucket=bucket, Key=obj.remote)
        except Exception as exc:
            raise classify(exc, entry=entry, bucket=bucket, key=obj.remote) from exc
        body = resp["Body"]
        try:
            length = int(resp["ContentLength"])
            check_size(obj.remote, length, limits.max_object_bytes)
            if obj.size is not None and length != obj.size:
                raise Transient(f"object s3://{bucket}/{obj.remote} changed size during the pull")
            md5 = _verifiable_md5(resp) if obj.md5 else None
            checked = ObjectPlan(obj.remote, obj.rel, obj.size, md5)
            counter = [0]

            def chunks():
                for chunk in body.iter_chunks(limits.chunk_bytes):
                    counter[0] += len(chunk)
                    yield chunk

            try:
                stream_to_file(chunks(), dest, obj=checked, expected=length, limits=limits)
            except bce.IncompleteReadError:
                raise TruncatedDownload(
                    path=f"s3://{bucket}/{obj.remote}", expected=length, received=counter[0]
                ) from None
            except Exception as exc:
                mapped = classify(exc, entry=entry, bucket=bucket, key=obj.remote)
                if mapped is exc and _is_network(exc):
                    mapped = Transient(f"connection broken while reading ({type(exc).__name__})")
                if mapped is exc:
                    raise
                raise mapped from exc
        finally:
            body.close()

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                c.close()  # type: ignore[attr-defined]
            self._clients.clear()


def _verifiable_md5(resp: dict) -> str | None:
    if resp.get("SSECustomerAlgorithm") or resp.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse"):
        return None
    return md5_from_etag(resp.get("ETag"))


def _no_answer(exc: Exception) -> bool:
    """True when the endpoint never answered (as opposed to a connection cut mid-response)."""
    return isinstance(
        exc, bce.EndpointConnectionError | bce.ConnectTimeoutError | bce.ProxyConnectionError | bce.SSLError
    )


def _is_network(exc: Exception) -> bool:
    import urllib3.exceptions as ue

    return isinstance(exc, ue.HTTPError | ConnectionError | TimeoutError)
