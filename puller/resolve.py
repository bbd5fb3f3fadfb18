"""Where a model comes from: parse the model key and turn (model path, key) into one typed source.

Owns the path rules (docs/storage.md "Model paths"), in this order:

1. ``file:///abs`` → a local path; must be written under one of ``local_roots`` and resolve inside it.
2. ``s3://bucket/key`` → the storage key's entry if one is given (must be s3), else the one s3 entry whose
   bucket is ``bucket`` (lowest key name if several), else ``default_<model_type>``/``default`` if s3.
3. ``http(s)://…`` → the given key's entry if http, else the http entry whose ``url`` is the longest
   prefix of the URL, else ``default_<model_type>``/``default`` if http whose url has the same origin.
   The URL must share scheme/host/port with the entry URL, so its headers never go to another host.
4. Any other path with a storage key, or without a key when ``default_<model_type>`` or ``default``
   exists: an object key/prefix in that storage (s3), a path under its url (http), or a path under its
   mount root (pvc/local).
5. Otherwise a local path: relative → tried against each local root in order; absolute → must be written
   under one. ``..`` components are refused.

Local paths are resolved through ``puller.confine`` (links included, one component at a time, nothing
outside the root touched) and the source carries its root, so the whole tree can be confined too.
``storage_params`` pass the entry's allow-list (``StorageConfig.entry``) and an ``s3://`` URI's bucket
is checked the same way. Every error message shows URLs through ``mesh.redact``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from mesh.redact import redact_text, redact_url
from puller.confine import Root, resolve_beneath
from puller.errors import (
    ArtifactNotFound,
    BucketNotFound,
    InvalidModelKey,
    InvalidModelPath,
    PathEscapesRoot,
    UnknownStorageKey,
)
from puller.storage_config import HTTP, LOCAL, S3, StorageConfig, StorageEntry, same_origin, url_under


@dataclass(frozen=True)
class ModelKey:
    storage_key: str = ""
    storage_params: dict[str, Any] = field(default_factory=dict)
    bucket: str = ""
    model_type: str = ""


def parse_model_key(text: str) -> ModelKey:
    """Parse the model key JSON (empty → no key). Raises InvalidModelKey."""
    if not text or not text.strip():
        return ModelKey()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidModelKey(reason=f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    except (ValueError, RecursionError):
        raise InvalidModelKey(reason="not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise InvalidModelKey(reason="must be a JSON object")
    key = data.get("storage_key") or ""
    params = data.get("storage_params") or {}
    bucket = data.get("bucket") or ""
    mtype = data.get("model_type") or ""
    if isinstance(mtype, dict):  # ModelMesh sends {"name": ..., "version": ...} here
        mtype = mtype.get("name") or ""
    if not isinstance(key, str):
        raise InvalidModelKey(reason="storage_key must be a string")
    if not isinstance(params, dict):
        raise InvalidModelKey(reason="storage_params must be an object")
    if not isinstance(bucket, str) or not isinstance(mtype, str):
        raise InvalidModelKey(reason="bucket and model_type must be strings")
    if bucket:
        params = {"bucket": bucket, **params}
    return ModelKey(storage_key=key, storage_params=params, bucket=bucket, model_type=mtype)


@dataclass(frozen=True)
class LocalSource:
    path: Path  # resolved and confined
    root: Root | None = None  # the root it is confined to (None: the path itself)

    def fingerprint(self) -> str:
        return f"local:{self.path}"


@dataclass(frozen=True)
class ObjectSource:
    entry: StorageEntry
    bucket: str
    key: str  # object key, or prefix ("" = whole bucket)

    def fingerprint(self) -> str:
        return f"s3:{self.entry.storage_key}:{self.entry.client_fingerprint()}:{self.bucket}/{self.key}"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class HttpSource:
    entry: StorageEntry
    url: str

    def fingerprint(self) -> str:
        return f"http:{self.entry.storage_key}:{self.entry.client_fingerprint()}:{self.url}"

    def describe(self) -> str:
        return redact_url(self.url)


Source = LocalSource | ObjectSource | HttpSource


def resolve(
    model_path: str,
    key: ModelKey,
    config: StorageConfig,
    *,
    local_roots: tuple[Path, ...],
    model_type: str = "",
) -> Source:
    """Apply the rules in the module docstring. Raises a PullError naming what is wrong."""
    if not model_path or "\0" in model_path:
        raise InvalidModelPath(path=_shown(model_path), reason="must be a non-empty path without NUL")
    mtype = key.model_type or model_type
    if model_path.startswith("file://"):
        p = urlsplit(model_path)
        if p.netloc not in ("", "localhost"):
            raise InvalidModelPath(path=_shown(model_path), reason="file:// URIs must not name a host")
        return _confine_local(unquote(p.path), local_roots)
    if model_path.startswith("s3://"):
        p = urlsplit(model_path)
        bucket, obj = p.netloc, p.path.lstrip("/")
        entry = _pick_entry(key, config, mtype, S3, model_path, lambda e: e.bucket == bucket)
        if entry.kind != S3:
            raise InvalidModelPath(
                path=_shown(model_path), reason=f"storage key '{entry.storage_key}' is not s3"
            )
        entry.check_bucket(bucket)
        return _object_source(entry, bucket, obj)
    if model_path.startswith(("http://", "https://")):
        entry = _pick_entry(key, config, mtype, HTTP, model_path, lambda e: url_under(model_path, e.url))
        if entry.kind != HTTP:
            raise InvalidModelPath(
                path=_shown(model_path), reason=f"storage key '{entry.storage_key}' is not http"
            )
        if not same_origin(model_path, entry.url):
            raise InvalidModelPath(
                path=_shown(model_path),
                reason=f"URL is not on the host of storage key '{entry.storage_key}'",
            )
        return HttpSource(entry, model_path)
    if "://" in model_path:
        raise InvalidModelPath(
            path=_shown(model_path), reason="unsupported URI scheme (use s3://, http(s):// or file://)"
        )

    entry = _keyed_entry(key, config, mtype)
    if entry is None:
        return _confine_local(model_path, local_roots)
    if entry.kind == S3:
        return _object_source(entry, entry.bucket, model_path.lstrip("/"))
    if entry.kind == HTTP:
        rel = _safe_relative(model_path)
        return HttpSource(entry, entry.url.rstrip("/") + "/" + rel)
    assert entry.kind == LOCAL and entry.root is not None
    return _confine_local(model_path, (entry.root,), relative_only=True)


def _keyed_entry(key: ModelKey, config: StorageConfig, mtype: str) -> StorageEntry | None:
    if key.storage_key:
        return config.entry(key.storage_key, key.storage_params)
    for name in ([f"default_{mtype}"] if mtype else []) + ["default"]:
        if name in config:
            return config.entry(name, key.storage_params)
    return None


def _pick_entry(
    key: ModelKey, config: StorageConfig, mtype: str, kind: str, uri: str, matches
) -> StorageEntry:
    if key.storage_key:
        return config.entry(key.storage_key, key.storage_params)
    candidates = [e for e in config.entries() if e.kind == kind and matches(e)]
    if kind == HTTP:
        candidates.sort(key=lambda e: -len(e.url))
    if candidates:
        name = candidates[0].storage_key
        return config.entry(name, key.storage_params)
    entry = _keyed_entry(key, config, mtype)
    if entry is not None and entry.kind == kind:
        return entry
    raise UnknownStorageKey(
        storage_key="",
        known=config.keys(),
        detail=f"no {kind} storage config entry matches '{_shown(uri)}' and there is no {kind} 'default' entry",
    )


def _object_source(entry: StorageEntry, bucket: str, obj: str) -> ObjectSource:
    if not bucket:
        raise BucketNotFound(storage_key=entry.storage_key, bucket="")
    return ObjectSource(entry, bucket, obj)


def _safe_relative(path: str) -> str:
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".")]
    if any(p == ".." for p in parts):
        raise PathEscapesRoot(path=_shown(path), root="the storage root")
    return "/".join(parts)


def _confine_local(path: str, roots: tuple[Path, ...], *, relative_only: bool = False) -> LocalSource:
    """Resolve ``path`` inside one of ``roots`` (puller.confine: links resolved, never followed outside).
    Refuses ``..``, absolute paths not written under a root, and anything resolving outside its root."""
    shown = _shown(path)
    if not roots:
        raise InvalidModelPath(path=shown, reason="local paths are not enabled (no local roots configured)")
    if ".." in PurePosixPath(path).parts:
        raise PathEscapesRoot(path=shown, root=" or ".join(str(r) for r in roots))
    candidate = PurePosixPath(path)
    if candidate.is_absolute() and relative_only:
        candidate = PurePosixPath(*candidate.parts[1:]) if len(candidate.parts) > 1 else PurePosixPath(".")
    if candidate.is_absolute():
        for root in roots:
            confined = Root.of(root)
            if _written_under(candidate, confined):
                real = resolve_beneath(confined, str(candidate), shown=shown)
                if not os.path.lexists(real):
                    raise ArtifactNotFound(where=f"local root {root}", path=shown)
                return LocalSource(real, confined)
        raise PathEscapesRoot(path=shown, root=" or ".join(str(r) for r in roots))
    for root in roots:
        confined = Root.of(root)
        real = resolve_beneath(confined, str(candidate), shown=shown)
        if os.path.lexists(real):
            return LocalSource(real, confined)
    raise ArtifactNotFound(where="local roots " + ", ".join(str(r) for r in roots), path=shown)


def _written_under(path: PurePosixPath, root: Root) -> bool:
    return any(path.parts[: len(base.parts)] == base.parts for base in (root.real, root.configured))


def _shown(path: str, limit: int = 200) -> str:
    """A model path as it may appear in a message: credentials redacted, length bounded."""
    text = redact_url(path) if "://" in path else redact_text(path)
    return text if len(text) <= limit else text[:limit] + "..."
