"""S3 through the MinIO client, for entries of type ``minio`` or ``s3`` with ``"client": "minio"``.

Owns the minio side of S3, with the same plan rules as ``providers/s3.py`` (object first, then the
``<key>/`` prefix) and the same checks. The client gets its own urllib3 pool with our timeouts, the
entry's CA bundle and urllib3 retries off, so ``with_retries`` stays the single retry policy.
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

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
from puller.providers.s3 import DENIED_CODES, TRANSIENT_CODES, md5_from_etag, prefix_plan
from puller.resolve import ObjectSource
from puller.settings import PullerSettings
from puller.storage_config import StorageEntry


def classify(exc: Exception, *, entry: StorageEntry, bucket: str, key: str) -> Exception:
    if isinstance(exc, S3Error):
        code = exc.code or ""
        if code in DENIED_CODES:
            return AccessDenied(where=entry.where(), code=code)
        if code == "NoSuchBucket":
            return BucketNotFound(storage_key=entry.storage_key, bucket=bucket)
        if code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            return ArtifactNotFound(where=entry.where(), path=f"s3://{bucket}/{key}")
        if code in TRANSIENT_CODES:
            return Transient(code)
        return PullError(f"{entry.where()} refused s3://{bucket}/{key}: {code}")
    if isinstance(exc, ServerError):
        return Transient(f"HTTP {exc.status_code}")
    if isinstance(exc, InvalidResponseError):
        return Transient("invalid response")
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        no_answer = isinstance(
            exc,
            urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
            | urllib3.exceptions.MaxRetryError | urllib3.exceptions.SSLError | ConnectionRefusedError,
        )  # fmt: skip
        return Transient(f"cannot connect ({type(exc).__name__})", unreachable=no_answer)
    return exc


class MinioProvider:
    def __init__(self, settings: PullerSettings) -> None:
        self._s = settings
        self._clients: dict[str, Minio] = {}
        self._pools: list[urllib3.PoolManager] = []
        self._lock = threading.Lock()

    def client(self, entry: StorageEntry) -> Minio:
        fp = entry.client_fingerprint()
        with self._lock:
            c = self._clients.get(fp)
            if c is None:
                c = self._clients[fp] = self._make_client(entry)
            return c

    def _make_client(self, entry: StorageEntry) -> Minio:
        url = urlsplit(entry.endpoint_url)
        ca = ca_bundle(entry.certificate, self._s.model_dir)
        pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self._s.connect_timeout_s, read=self._s.read_timeout_s),
            maxsize=max(10, self._s.max_concurrent_files * self._s.max_concurrent_pulls),
            retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False),
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca or _default_ca(),
        )
        self._pools.append(pool)
        return Minio(
            url.netloc, access_key=entry.access_key_id or None, secret_key=entry.secret_access_key or None,
            secure=url.scheme == "https", region=entry.region or "us-east-1", http_client=pool,
        )  # fmt: skip

    def plan(self, source: ObjectSource) -> FetchPlan:
        entry, bucket, key = source.entry, source.bucket, source.key
        client = self.client(entry)
        head_denied: Exception | None = None
        try:
            if key and not key.endswith("/"):
                try:
                    st = client.stat_object(bucket, key)
                except S3Error as exc:
                    if exc.code in DENIED_CODES:  # HEAD has no body: let the listing name the exact code
                        head_denied = exc
                    elif exc.code not in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                        raise
                else:
                    size = int(st.size or 0)
                    obj = ObjectPlan(
                        remote=key, rel=safe_rel(PurePosixPath(key).name, remote=key),
                        size=size, md5=md5_from_etag(st.etag),
                    )  # fmt: skip
                    return FetchPlan(objects=(obj,), single=True)
            prefix = key.rstrip("/") + "/" if key else ""
            objects = []
            for item in client.list_objects(bucket, prefix=prefix, recursive=True):
                name = item.object_name or ""
                if item.is_dir or name.endswith("/"):
                    continue
                rel = safe_rel(name[len(prefix) :], remote=name)
                objects.append(
                    ObjectPlan(remote=name, rel=rel, size=int(item.size or 0), md5=md5_from_etag(item.etag))
                )
        except (PullError, Transient):
            raise
        except Exception as exc:
            raise classify(exc, entry=entry, bucket=bucket, key=key) from exc
        return prefix_plan(objects, head_denied, classify, entry=entry, bucket=bucket, key=key)

    def fetch(self, source: ObjectSource, obj: ObjectPlan, dest: Path, limits: Limits) -> None:
        entry, bucket = source.entry, source.bucket
        client = self.client(entry)
        try:
            resp = client.get_object(bucket, obj.remote)
        except Exception as exc:
            raise classify(exc, entry=entry, bucket=bucket, key=obj.remote) from exc
        try:
            length = int(resp.headers.get("Content-Length", obj.size or 0))
            check_size(obj.remote, length, limits.max_object_bytes)
            if obj.size is not None and length != obj.size:
                raise Transient(f"object s3://{bucket}/{obj.remote} changed size during the pull")
            encrypted = resp.headers.get("x-amz-server-side-encryption") in (
                "aws:kms",
                "aws:kms:dsse",
            ) or bool(resp.headers.get("x-amz-server-side-encryption-customer-algorithm"))
            checked = ObjectPlan(obj.remote, obj.rel, obj.size, None if encrypted else obj.md5)
            counter = [0]

            def chunks():
                for chunk in resp.stream(limits.chunk_bytes, decode_content=False):
                    counter[0] += len(chunk)
                    yield chunk

            try:
                stream_to_file(chunks(), dest, obj=checked, expected=length, limits=limits)
            except urllib3.exceptions.ProtocolError:
                raise TruncatedDownload(
                    path=f"s3://{bucket}/{obj.remote}", expected=length, received=counter[0]
                ) from None
            except urllib3.exceptions.HTTPError as exc:
                raise Transient(f"connection broken while reading ({type(exc).__name__})") from exc
        finally:
            resp.close()
            resp.release_conn()

    def close(self) -> None:
        with self._lock:
            for pool in self._pools:
                pool.clear()
            self._pools.clear()
            self._clients.clear()


def _default_ca() -> str | None:
    try:
        import certifi

        return certifi.where()
    except ImportError:  # pragma: no cover
        return None
