"""The storage config: parse ModelMesh-style storage secrets into typed entries, and re-read them on change.

Owns the meaning of a storage entry. Input is either one JSON file (an object of key → entry, where an
entry may also be a JSON *string*, as in a Kubernetes Secret's ``stringData``) or a directory holding one
file per key (a mounted Secret; hidden names such as ``..data`` are skipped). ``StorageConfigStore``
stats the source on every ``current()`` call and re-reads it only when a modification time or size
changed, so edits apply without a restart. An entry that fails to parse is kept as its error: it breaks
only the models that use it. ``storage_params`` from a model key are merged over the raw entry before
parsing, so they can override any field.

Secrets (``secret_access_key``, header values, private keys) live only in ``StorageEntry`` fields that
``repr`` never prints; messages name the key, type, endpoint host and bucket only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from puller.errors import InvalidStorageConfig, UnknownStorageKey

log = logging.getLogger("puller.storage_config")

S3, HTTP, LOCAL = "s3", "http", "local"
_TYPES = {"s3": S3, "minio": S3, "http": HTTP, "https": HTTP, "pvc": LOCAL, "local": LOCAL}


@dataclass(frozen=True, repr=False)
class StorageEntry:
    """One parsed storage entry. ``kind`` is ``s3``, ``http`` or ``local``."""

    storage_key: str
    kind: str
    client: str = "boto3"  # s3 only: "boto3" or "minio"
    endpoint_url: str = ""
    region: str = ""
    bucket: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    certificate: str = ""  # PEM text or a path to a PEM file
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    root: Path | None = None  # local/pvc mount root

    def __repr__(self) -> str:
        shown = [f"key={self.storage_key!r}", f"kind={self.kind!r}"]
        if self.kind == S3:
            shown += [f"client={self.client!r}", f"endpoint={self.endpoint_url!r}", f"bucket={self.bucket!r}"]
            shown.append(f"credentials={'set' if self.secret_access_key else 'none'}")
        elif self.kind == HTTP:
            shown += [f"url={safe_url(self.url)!r}", f"headers={[h for h, _ in self.headers]!r}"]
        else:
            shown.append(f"root={str(self.root)!r}")
        if self.certificate:
            shown.append("certificate=set")
        return f"StorageEntry({', '.join(shown)})"

    __str__ = __repr__

    def where(self) -> str:
        """A secret-free description for messages: ``s3 'key' at host``."""
        if self.kind == S3:
            host = urlsplit(self.endpoint_url).netloc if self.endpoint_url else "AWS S3"
            return f"{self.client if self.client == 'minio' else 's3'} storage '{self.storage_key}' at {host}"
        if self.kind == HTTP:
            return f"http storage '{self.storage_key}' at {urlsplit(self.url).netloc}"
        return f"local storage '{self.storage_key}'"

    def client_fingerprint(self) -> str:
        """Identity for client caching: changes whenever any connection field (secrets included) changes,
        without holding the secrets themselves."""
        h = hashlib.sha256()
        for part in (
            self.kind,
            self.client,
            self.endpoint_url,
            self.region,
            self.access_key_id,
            self.secret_access_key,
            self.certificate,
            self.url,
            repr(self.headers),
        ):
            h.update(part.encode() + b"\0")
        return h.hexdigest()[:24]


def safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment: what may appear in messages and logs."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return f"{p.scheme}://{host}{p.path}" if p.scheme else p.path


def parse_entry(storage_key: str, raw: Any, *, pvc_mounts_dir: Path) -> StorageEntry:
    """Parse one raw entry (dict or JSON string). Raises InvalidStorageConfig naming the problem."""

    def bad(reason: str) -> InvalidStorageConfig:
        return InvalidStorageConfig(storage_key=storage_key, reason=reason)

    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise bad("entry is not valid JSON") from None
    if not isinstance(raw, dict):
        raise bad("entry must be a JSON object")
    type_name = str(raw.get("type", "")).lower()
    if type_name not in _TYPES:
        raise bad(f"type '{type_name}' is not supported (use one of {sorted(_TYPES)})")
    kind = _TYPES[type_name]

    def text(name: str) -> str:
        value = raw.get(name, "")
        if value is None:
            return ""
        if not isinstance(value, str | int | float | bool):
            raise bad(f"field '{name}' must be a string")
        return str(value)

    if kind == S3:
        client = "minio" if type_name == "minio" else (text("client").lower() or "boto3")
        if client not in ("boto3", "minio"):
            raise bad(f"client '{client}' is not supported (boto3 or minio)")
        endpoint = text("endpoint_url")
        if endpoint and not endpoint.startswith(("http://", "https://")):
            endpoint = f"https://{endpoint}"
        if client == "minio" and not endpoint:
            raise bad("a minio entry needs endpoint_url")
        return StorageEntry(
            storage_key=storage_key, kind=S3, client=client, endpoint_url=endpoint.rstrip("/"),
            region=text("region"), bucket=text("bucket") or text("default_bucket"),
            access_key_id=text("access_key_id"), secret_access_key=text("secret_access_key"),
            certificate=text("certificate"),
        )  # fmt: skip
    if kind == HTTP:
        url = text("url")
        if not url.startswith(("http://", "https://")):
            raise bad("an http entry needs a url starting with http:// or https://")
        headers = raw.get("headers") or {}
        if isinstance(headers, str):
            try:
                headers = json.loads(headers)
            except ValueError:
                raise bad("headers is not a JSON object") from None
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise bad("headers must be an object of string values")
        return StorageEntry(
            storage_key=storage_key, kind=HTTP, url=url, certificate=text("certificate"),
            headers=tuple((str(k), v) for k, v in headers.items()),
        )  # fmt: skip
    root_text = text("path") or text("root")
    if root_text:
        root = Path(root_text)
    elif text("name"):
        name = text("name")
        if "/" in name or name in (".", ".."):
            raise bad("pvc name must be a single path component")
        root = pvc_mounts_dir / name
    else:
        raise bad(f"a {type_name} entry needs 'path' (or 'name' for a pvc under {pvc_mounts_dir})")
    if not root.is_absolute():
        raise bad("the mount path must be absolute")
    return StorageEntry(storage_key=storage_key, kind=LOCAL, root=root)


class StorageConfig:
    """An immutable snapshot of the storage config: raw entries plus their parse results."""

    def __init__(self, raw: dict[str, Any], *, pvc_mounts_dir: Path) -> None:
        self._raw = raw
        self._pvc = pvc_mounts_dir
        self._parsed: dict[str, StorageEntry | InvalidStorageConfig] = {}
        for key, value in raw.items():
            try:
                self._parsed[key] = parse_entry(key, value, pvc_mounts_dir=pvc_mounts_dir)
            except InvalidStorageConfig as exc:
                self._parsed[key] = exc

    def keys(self) -> list[str]:
        return sorted(self._raw)

    def __contains__(self, key: str) -> bool:
        return key in self._raw

    def entry(self, key: str, params: dict[str, Any] | None = None) -> StorageEntry:
        """The entry for ``key`` with ``params`` merged over it. Raises UnknownStorageKey/InvalidStorageConfig."""
        if key not in self._raw:
            raise UnknownStorageKey(storage_key=key, known=self.keys())
        if params:
            raw = self._raw[key]
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except ValueError:
                    raise InvalidStorageConfig(storage_key=key, reason="entry is not valid JSON") from None
            if not isinstance(raw, dict):
                raise InvalidStorageConfig(storage_key=key, reason="entry must be a JSON object")
            return parse_entry(key, {**raw, **params}, pvc_mounts_dir=self._pvc)
        parsed = self._parsed[key]
        if isinstance(parsed, InvalidStorageConfig):
            raise parsed
        return parsed

    def entries(self) -> list[StorageEntry]:
        """Every entry that parsed, sorted by key (used to match ``s3://`` and ``http(s)://`` URIs)."""
        return [e for k in self.keys() if isinstance(e := self._parsed[k], StorageEntry)]


class StorageConfigStore:
    """Holds the current StorageConfig and re-reads the file/dir when its stat signature changes.

    A read that fails (half-written file, bad JSON) keeps the last good snapshot and logs a warning; if
    there never was a good one, the failure is raised to the caller as InvalidStorageConfig."""

    def __init__(self, path: Path | None, *, pvc_mounts_dir: Path) -> None:
        self._path = path
        self._pvc = pvc_mounts_dir
        self._signature: tuple | None = None
        self._config = StorageConfig({}, pvc_mounts_dir=pvc_mounts_dir)
        self._error: InvalidStorageConfig | None = None

    def current(self) -> StorageConfig:
        if self._path is None:
            return self._config
        sig = self._stat_signature()
        if sig != self._signature:
            try:
                self._config = StorageConfig(self._read(), pvc_mounts_dir=self._pvc)
                self._error = None
                log.info("storage config loaded from %s: keys %s", self._path, self._config.keys())
            except InvalidStorageConfig as exc:
                log.warning("storage config at %s not reloaded: %s", self._path, exc.reason)
                if self._signature is None:
                    self._error = exc
            self._signature = sig
        if self._error is not None:
            raise self._error
        return self._config

    def _stat_signature(self) -> tuple:
        path = self._path
        assert path is not None
        try:
            st = path.stat()
        except OSError:
            return ("missing",)
        if not path.is_dir():
            return ("file", st.st_mtime_ns, st.st_size, st.st_ino)
        parts: list[tuple] = [("dir", st.st_mtime_ns)]
        try:
            with os.scandir(path) as it:
                for d in it:
                    if d.name.startswith("."):
                        continue
                    try:
                        s = d.stat()  # follows the ..data symlinks of a mounted Secret
                        parts.append((d.name, s.st_mtime_ns, s.st_size, s.st_ino))
                    except OSError:
                        parts.append((d.name, "gone"))
        except OSError:
            return ("unreadable",)
        return tuple(parts)

    def _read(self) -> dict[str, Any]:
        path = self._path
        assert path is not None
        if not path.exists():
            log.warning("storage config %s does not exist; no storage keys are configured", path)
            return {}
        if path.is_dir():
            raw: dict[str, Any] = {}
            for child in sorted(path.iterdir()):
                if child.name.startswith(".") or not child.is_file():
                    continue
                try:
                    raw[child.name] = child.read_text()
                except OSError as exc:
                    raise InvalidStorageConfig(
                        storage_key=child.name, reason=f"unreadable: {exc.strerror}"
                    ) from None
            return raw
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            raise InvalidStorageConfig(
                storage_key="*", reason=f"{path} is not a readable JSON file"
            ) from None
        if not isinstance(data, dict):
            raise InvalidStorageConfig(
                storage_key="*", reason=f"{path} must hold a JSON object of key -> entry"
            )
        return data
