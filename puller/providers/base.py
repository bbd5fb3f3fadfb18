"""What every storage provider shares: the plan/fetch protocol, streaming to disk with checks, retries.

Owns the download mechanics that must not differ between S3, MinIO and HTTP:

- ``Provider``: ``plan(source)`` lists what to fetch (relative path, size, checksum) and ``fetch(source,
  obj, dest, limits)`` streams one object to ``dest``. Both block; the puller runs them in its named
  ``puller-io`` executor. Providers hold one client per storage entry (keyed by the entry's fingerprint).
- ``stream_to_file``: writes chunks as they arrive (memory bounded by the chunk size), enforces the size
  limit on a running count, grows the disk reservation for unknown sizes, and checks the result: fewer
  bytes than announced → TruncatedDownload, more or a different MD5 → VerificationFailed.
- ``with_retries``: one retry policy. Only ``Transient`` (raised by providers for 5xx, throttling,
  connection and read errors), TruncatedDownload and VerificationFailed are retried, with exponential
  backoff and full jitter; everything else fails at once; nothing is retried once the pull is aborted.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from mesh.redact import redact_text
from puller.errors import (
    ObjectTooLarge,
    PathEscapesRoot,
    StorageUnavailable,
    TruncatedDownload,
    VerificationFailed,
)

log = logging.getLogger("puller.providers")
T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying; ``cause`` is a secret-free description. ``unreachable``: no answer at all
    (connection refused or timed out, DNS, TLS handshake cut), as opposed to an answer saying "busy"."""

    def __init__(self, cause: str, *, unreachable: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.unreachable = unreachable


@dataclass(frozen=True)
class ObjectPlan:
    remote: str  # object key or URL
    rel: str  # relative file path under the model dir
    size: int | None  # None = unknown until the response arrives
    md5: str | None = None  # hex MD5 to verify (single-part S3 ETag), if known


@dataclass(frozen=True)
class FetchPlan:
    objects: tuple[ObjectPlan, ...]
    single: bool  # True: the artifact is one file (artifact path = that file)

    @property
    def known_bytes(self) -> int:
        return sum(o.size or 0 for o in self.objects)


class Aborted(Exception):
    """The pull was abandoned (another file failed, or the puller is closing); stop writing."""


@dataclass
class Limits:
    max_object_bytes: int
    chunk_bytes: int
    reservation: Any  # budget.Reservation (grow/release)
    abort: threading.Event = field(default_factory=threading.Event)
    _reserved: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> None:
        if self.abort.is_set():
            raise Aborted()

    def ensure_reserved(self, rel: str, size: int) -> None:
        """Make the disk reservation cover ``size`` bytes for file ``rel`` (idempotent across retries)."""
        with self._lock:
            extra = size - self._reserved.get(rel, 0)
            if extra <= 0:
                return
            self._reserved[rel] = size
        self.reservation.grow(extra)


def ca_bundle(certificate: str, model_dir: Path) -> str | None:
    """A CA bundle path for a storage entry's ``certificate`` (PEM text is written once to a file)."""
    if not certificate:
        return None
    if "-----BEGIN" not in certificate:
        return certificate
    digest = hashlib.sha256(certificate.encode()).hexdigest()[:32]
    d = model_dir / ".puller-certs"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{digest}.pem"
    if not path.exists():
        tmp = d / f".{digest}.{threading.get_ident()}.tmp"
        tmp.write_text(certificate)
        tmp.replace(path)
    return str(path)


class Provider(Protocol):
    def plan(self, source: Any) -> FetchPlan: ...

    def fetch(self, source: Any, obj: ObjectPlan, dest: Path, limits: Limits) -> None: ...

    def close(self) -> None: ...


def safe_rel(rel: str, *, remote: str) -> str:
    """A relative file path that cannot leave the model dir (object keys may contain ``..``)."""
    parts = [p for p in PurePosixPath(rel).parts if p not in ("", ".")]
    if not parts or parts[0] == "/" or ".." in parts or any("\0" in p for p in parts):
        raise PathEscapesRoot(path=remote, root="the model directory")
    return "/".join(parts)


def check_size(path: str, size: int | None, limit: int) -> None:
    if limit and size is not None and size > limit:
        raise ObjectTooLarge(path=path, size=size, limit=limit)


def stream_to_file(
    chunks: Iterable[bytes], dest: Path, *, obj: ObjectPlan, expected: int | None, limits: Limits
) -> int:
    """Write ``chunks`` to ``dest`` with the checks in the module docstring; returns the bytes written."""
    limits.check()  # an aborted pull's temp dir may be gone already: never create it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    md5 = hashlib.md5(usedforsecurity=False) if obj.md5 else None
    written = 0
    ahead = 0
    with open(dest, "wb") as f:
        for chunk in chunks:
            limits.check()
            if not chunk:
                continue
            written += len(chunk)
            if limits.max_object_bytes and written > limits.max_object_bytes:
                raise ObjectTooLarge(path=obj.remote, size=written, limit=limits.max_object_bytes)
            if expected is not None and written > expected:
                raise VerificationFailed(
                    path=obj.remote, reason=f"received more than the announced {expected} bytes"
                )
            if expected is None and written > ahead:  # unknown size: reserve disk ahead of the bytes
                ahead = written + limits.chunk_bytes * 8
                limits.ensure_reserved(obj.rel, ahead)
            if md5 is not None:
                md5.update(chunk)
            f.write(chunk)
    if expected is not None and written < expected:
        raise TruncatedDownload(path=obj.remote, expected=expected, received=written)
    if md5 is not None and md5.hexdigest() != obj.md5:
        raise VerificationFailed(
            path=obj.remote, reason="MD5 of the downloaded bytes does not match the ETag"
        )
    return written


def with_retries(
    fn: Callable[[], T],
    *,
    where: str,
    attempts: int,
    backoff_s: float,
    backoff_max_s: float,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    abort: threading.Event | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying only the retryable failures (see module docstring). Once
    ``abort`` is set (the pull was abandoned or failed elsewhere) no further attempt starts and the backoff
    wait ends: ``Aborted``."""
    rng = rng or random.Random()
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        if abort is not None and abort.is_set():
            raise Aborted()
        try:
            return fn()
        except (Transient, TruncatedDownload, VerificationFailed) as exc:
            if attempt == attempts:
                if isinstance(exc, Transient):
                    raise StorageUnavailable(
                        where=where, cause=exc.cause, attempts=attempt, unreachable=exc.unreachable
                    ) from exc
                raise
            delay = rng.uniform(0, min(backoff_max_s, backoff_s * 2 ** (attempt - 1)))
            log.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.2fs",
                where, attempt, attempts, redact_text(str(exc)), delay,
            )  # fmt: skip
            if abort is not None:
                abort.wait(delay)
            else:
                sleep(delay)
    raise AssertionError("unreachable")
