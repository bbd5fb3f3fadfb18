"""HTTP(S) artifacts through requests: one file per model path, streamed, size-checked, redirect-safe.

Owns the HTTP side. One ``requests.Session`` per storage entry (keyed by its fingerprint) carrying the
entry's headers and CA bundle (``verify``). Redirects (at most 10) are followed by hand so the entry's
headers are sent only to the entry's own origin: a redirect to another host gets no headers at all
(requests would strip only ``Authorization``). ``Accept-Encoding: identity`` is asked for so that
``Content-Length`` is the file size; a response declaring more than ``max_object_bytes`` is refused
before reading, a response without a length is bounded by a running count, and a body shorter than its
``Content-Length`` is a TruncatedDownload. 401/403 → AccessDenied, 404/410 → ArtifactNotFound,
408/429/5xx and connection errors → retried.
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3

from mesh.redact import redact_url
from puller.errors import AccessDenied, ArtifactNotFound, PullError, TruncatedDownload
from puller.providers.base import (
    FetchPlan,
    Limits,
    ObjectPlan,
    Transient,
    ca_bundle,
    check_size,
    stream_to_file,
)
from puller.resolve import HttpSource
from puller.settings import PullerSettings
from puller.storage_config import StorageEntry, same_origin

MAX_REDIRECTS = 10


class HttpProvider:
    def __init__(self, settings: PullerSettings) -> None:
        self._s = settings
        self._sessions: dict[str, requests.Session] = {}
        self._lock = threading.Lock()

    def session(self, entry: StorageEntry) -> requests.Session:
        fp = entry.client_fingerprint()
        with self._lock:
            s = self._sessions.get(fp)
            if s is None:
                s = requests.Session()
                s.verify = ca_bundle(entry.certificate, self._s.model_dir) or True
                s.trust_env = False  # no proxy/netrc surprises; the entry is the whole config
                self._sessions[fp] = s
            return s

    def plan(self, source: HttpSource) -> FetchPlan:
        name = PurePosixPath(unquote(urlsplit(source.url).path)).name or "model"
        if name in (".", "..") or "\0" in name:
            name = "model"
        return FetchPlan(objects=(ObjectPlan(remote=source.url, rel=name, size=None),), single=True)

    def fetch(self, source: HttpSource, obj: ObjectPlan, dest: Path, limits: Limits) -> None:
        entry = source.entry
        shown = redact_url(source.url)
        resp = self._get(entry, source.url, shown)
        try:
            length_text = resp.headers.get("Content-Length")
            encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
            length = int(length_text) if length_text and length_text.isdigit() and not encoded else None
            check_size(shown, length, limits.max_object_bytes)
            if length is not None:
                limits.ensure_reserved(obj.rel, length)
            counter = [0]

            def chunks():
                # read1: what has arrived, up to a chunk. A storage that dribbles its bytes is then seen as it
                # sends them, so an abandoned pull stops at the next bytes (stream_to_file checks the abort
                # flag per chunk), not when the whole chunk or file is in (iter_content would block for it).
                while chunk := resp.raw.read1(limits.chunk_bytes, decode_content=True):
                    counter[0] += len(chunk)
                    yield chunk

            named = ObjectPlan(remote=shown, rel=obj.rel, size=length)
            try:
                stream_to_file(chunks(), dest, obj=named, expected=length, limits=limits)
            except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.NewConnectionError) as exc:
                raise Transient(f"connection broken while reading ({type(exc).__name__})") from None
            except (
                requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.ProtocolError,
                urllib3.exceptions.HTTPError,
            ):
                if length is not None:
                    raise TruncatedDownload(path=shown, expected=length, received=counter[0]) from None
                raise Transient(f"connection broken while reading {shown}") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                raise Transient(f"connection broken while reading ({type(exc).__name__})") from None
        finally:
            resp.close()

    def _get(self, entry: StorageEntry, url: str, shown: str) -> requests.Response:
        session = self.session(entry)
        headers = {"Accept-Encoding": "identity", **dict(entry.headers)}
        timeout = (self._s.connect_timeout_s, self._s.read_timeout_s)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = session.get(
                    url, headers=headers if same_origin(url, entry.url) else {"Accept-Encoding": "identity"},
                    stream=True, allow_redirects=False, timeout=timeout,
                )  # fmt: skip
            except requests.exceptions.SSLError:
                raise PullError(
                    f"TLS verification failed for {entry.where()} (check 'certificate')"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                no_answer = isinstance(exc, requests.exceptions.ConnectTimeout) or not isinstance(
                    exc, requests.exceptions.ReadTimeout
                )
                raise Transient(f"cannot connect ({type(exc).__name__})", unreachable=no_answer) from None
            except requests.exceptions.RequestException as exc:
                raise PullError(f"request to {shown} failed: {type(exc).__name__}") from None
            if resp.is_redirect and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                resp.close()
                if not url.startswith(("http://", "https://")):
                    raise PullError(f"{shown} redirected to a non-HTTP location")
                continue
            status = resp.status_code
            if status < 300:
                return resp
            resp.close()
            if status in (401, 403):
                raise AccessDenied(where=entry.where(), code=f"HTTP {status}")
            if status in (404, 410):
                raise ArtifactNotFound(where=entry.where(), path=shown)
            if status in (408, 429) or status >= 500:
                raise Transient(f"HTTP {status}")
            raise PullError(f"{entry.where()} answered HTTP {status} for {shown}")
        raise PullError(f"{shown}: more than {MAX_REDIRECTS} redirects")

    def close(self) -> None:
        with self._lock:
            for s in self._sessions.values():
                s.close()
            self._sessions.clear()
