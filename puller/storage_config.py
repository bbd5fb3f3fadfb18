"""The storage config: parse ModelMesh-style storage secrets into typed entries, and re-read them on change.

Owns the meaning of a storage entry. Input is either one JSON file (an object of key → entry, where an
entry may also be a JSON *string*, as in a Kubernetes Secret's ``stringData``) or a directory holding one
file per key (a mounted Secret; hidden names such as ``..data`` are skipped). ``StorageConfigStore``
stats the source on every ``current()`` call and re-reads it only when a modification time or size
changed, so edits apply without a restart. An entry that fails to parse is kept as its error: it breaks
only the models that use it.

The administrator's entry is the trust boundary (docs/security.md). ``storage_params`` from a model key
(a registration) are merged over the raw entry only where the entry allows it (``allowed_params``):

- a parameter named in the entry's ``allowed_params`` is merged as given. Without ``allowed_params``, s3
  and minio entries allow ``bucket`` and every other type allows nothing;
- a parameter that changes nothing is accepted and dropped: the entry's own value, or a ``type`` of the
  same kind (ModelMesh's controller sends ``type``/``bucket``/``url`` derived from a storage URI);
- a parameter that only narrows the entry is accepted: ``bucket``/``default_bucket`` when the entry names
  no bucket, ``url`` under the entry's own url (same scheme, host and port, path below);
- anything else (another ``type``, ``endpoint_url``, ``url`` elsewhere, ``headers``, credentials,
  ``certificate``, paths of local storage, unknown names) is ``StorageParamNotAllowed``, before any I/O.

Secrets (``secret_access_key``, header values, URL passwords) live only in ``StorageEntry`` fields that
``repr`` never prints; messages name the key, type, endpoint host and bucket only, through
``mesh.redact``.
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

from mesh.redact import redact_url
from puller.errors import InvalidStorageConfig, StorageParamNotAllowed, UnknownStorageKey

log = logging.getLogger("puller.storage_config")

S3, HTTP, LOCAL = "s3", "http", "local"
_TYPES = {"s3": S3, "minio": S3, "http": HTTP, "https": HTTP, "pvc": LOCAL, "local": LOCAL}
# The fields each kind of entry reads: what ``allowed_params`` may name.
PARAMS: dict[str, frozenset[str]] = {
    S3: frozenset({"type", "client", "endpoint_url", "region", "bucket", "default_bucket", "access_key_id",
                   "secret_access_key", "certificate"}),
    HTTP: frozenset({"type", "url", "headers", "certificate"}),
    LOCAL: frozenset({"type", "path", "root", "name"}),
}  # fmt: skip
DEFAULT_ALLOWED: dict[str, frozenset[str]] = {
    S3: frozenset({"bucket"}),
    HTTP: frozenset(),
    LOCAL: frozenset(),
}


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
    allowed_params: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        shown = [f"key={self.storage_key!r}", f"kind={self.kind!r}"]
        if self.kind == S3:
            endpoint = redact_url(self.endpoint_url) if self.endpoint_url else ""
            shown += [f"client={self.client!r}", f"endpoint={endpoint!r}", f"bucket={self.bucket!r}"]
            shown.append(f"credentials={'set' if self.secret_access_key else 'none'}")
        elif self.kind == HTTP:
            shown += [f"url={redact_url(self.url)!r}", f"headers={[h for h, _ in self.headers]!r}"]
        else:
            shown.append(f"root={str(self.root)!r}")
        if self.certificate:
            shown.append("certificate=set")
        shown.append(f"allowed_params={sorted(self.allowed_params)!r}")
        return f"StorageEntry({', '.join(shown)})"

    __str__ = __repr__

    def where(self) -> str:
        """A secret-free description for messages: ``s3 storage 'key' at host:port``."""
        if self.kind == S3:
            host = host_of(self.endpoint_url) if self.endpoint_url else "AWS S3"
            return f"{self.client if self.client == 'minio' else 's3'} storage '{self.storage_key}' at {host}"
        if self.kind == HTTP:
            return f"http storage '{self.storage_key}' at {host_of(self.url)}"
        return f"local storage '{self.storage_key}'"

    def secrets(self) -> tuple[str, ...]:
        """Every secret value this entry holds, for scrubbing text that might echo one."""
        found = [self.secret_access_key, *(v for _, v in self.headers)]
        for url in (self.url, self.endpoint_url):
            try:
                p = urlsplit(url)
                found.append(p.password or "")
            except ValueError:
                continue
        return tuple(s for s in found if s)

    def check_bucket(self, bucket: str) -> None:
        """A bucket chosen by a registration (``s3://bucket/…``) must be allowed like ``storage_params``."""
        if bucket and self.bucket and bucket != self.bucket and "bucket" not in self.allowed_params:
            raise StorageParamNotAllowed(
                storage_key=self.storage_key, param="bucket", allowed=sorted(self.allowed_params)
            )

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


def host_of(url: str) -> str:
    """``host:port`` of a URL, never its userinfo."""
    try:
        p = urlsplit(url)
        port = p.port
    except ValueError:
        return "<unparseable url>"
    host = p.hostname or ""
    return f"{host}:{port}" if port else host


def same_origin(a: str, b: str) -> bool:
    def origin(url: str) -> tuple:
        p = urlsplit(url)
        return (p.scheme, p.hostname, p.port or (443 if p.scheme == "https" else 80))

    try:
        return origin(a) == origin(b)
    except ValueError:
        return False


def url_under(url: str, base: str) -> bool:
    """``url`` is on ``base``'s origin and its path is ``base``'s path or below it (segment-wise)."""
    if not same_origin(url, base):
        return False
    path, prefix = urlsplit(url).path, urlsplit(base).path.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or not prefix


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
    allowed = _allowed_params(raw.get("allowed_params"), kind, bad)

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
        if endpoint and "@" in urlsplit(endpoint).netloc:
            raise bad("endpoint_url must not hold user:password@ (use access_key_id and secret_access_key)")
        return StorageEntry(
            storage_key=storage_key, kind=S3, client=client, endpoint_url=endpoint.rstrip("/"),
            region=text("region"), bucket=text("bucket") or text("default_bucket"),
            access_key_id=text("access_key_id"), secret_access_key=text("secret_access_key"),
            certificate=text("certificate"), allowed_params=allowed,
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
            headers=tuple((str(k), v) for k, v in headers.items()), allowed_params=allowed,
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
    return StorageEntry(storage_key=storage_key, kind=LOCAL, root=root, allowed_params=allowed)


def _allowed_params(value: Any, kind: str, bad) -> frozenset[str]:
    if value is None:
        return DEFAULT_ALLOWED[kind]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad("allowed_params must be a list of parameter names")
    unknown = sorted(set(value) - PARAMS[kind])
    if unknown:
        raise bad(
            f"allowed_params names {unknown}, which this type does not have "
            f"(it has: {', '.join(sorted(PARAMS[kind]))})"
        )
    return frozenset(value)


def accepted_params(entry: StorageEntry, raw: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The ``storage_params`` to merge over ``raw`` under the rules in the module docstring; raises
    StorageParamNotAllowed naming the first parameter that is not allowed."""
    merged: dict[str, Any] = {}
    for name, value in params.items():
        if name in entry.allowed_params:
            merged[name] = value
        elif name == "type" and _TYPES.get(str(value).lower()) == entry.kind:
            continue  # the same kind: nothing changes (the entry keeps its own type and client)
        elif name in raw and raw[name] == value:
            continue
        elif entry.kind == S3 and name in ("bucket", "default_bucket") and not entry.bucket:
            merged[name] = value
        elif entry.kind == HTTP and name == "url" and isinstance(value, str) and url_under(value, entry.url):
            merged[name] = value
        else:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise StorageParamNotAllowed(
                storage_key=entry.storage_key, param=shown, allowed=sorted(entry.allowed_params)
            )
    return merged


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
        """The entry for ``key`` with the allowed ``params`` merged over it (module docstring). Raises
        UnknownStorageKey, InvalidStorageConfig or StorageParamNotAllowed."""
        if key not in self._raw:
            raise UnknownStorageKey(storage_key=key, known=self.keys())
        parsed = self._parsed[key]
        if isinstance(parsed, InvalidStorageConfig):
            raise parsed
        if not params:
            return parsed
        raw = self._raw[key]
        if isinstance(raw, str):
            raw = json.loads(raw)  # parsed above, so it is valid JSON of an object
        merged = accepted_params(parsed, raw, params)
        if not merged:
            return parsed
        return parse_entry(key, {**raw, **merged}, pvc_mounts_dir=self._pvc)

    def secrets(self) -> tuple[str, ...]:
        """The secret values of every entry that parsed (see StorageEntry.secrets)."""
        return tuple(s for e in self.entries() for s in e.secrets())

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
