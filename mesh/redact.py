"""The one redaction helper: what may be printed of URLs, headers, keys and free text.

Owns the rule for everything the mesh, the storage and the runtime side print (error messages that travel to clients
through ``loadModel`` and end up in model statuses, log lines, ``repr``): credentials never appear.

- ``redact_url``: scheme, host, port and path are kept; userinfo (``user:password@``) becomes ``***@`` and
  every query value becomes ``***`` (pre-signed URLs carry their signature there); fragments are dropped.
- ``redact_headers``: header names are kept; values of credential-bearing headers (``Authorization``,
  ``Cookie``, ``X-Amz-*``, anything naming a token, key, secret, password, signature or credential) are
  replaced by ``***``.
- ``redact_text``: scrubs free text (exception messages, tracebacks, log lines) of the same things found by
  pattern (URL userinfo, ``Authorization: …``, ``Bearer …``, signed query parameters, ``secret_key=…``-style
  pairs) plus any exact secret value the caller knows (a storage entry's keys and header values).
- ``RedactingFilter``: a logging filter that applies ``redact_text`` to every record, tracebacks included;
  runtime processes install it on their handlers (``install_log_redaction``), so a library's own log line
  (botocore at DEBUG prints request headers) is scrubbed too.

Pure standard library, no imports from the rest of the project, so the mesh can use it as well.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
_MIN_SECRET_CHARS = 4  # shorter "secrets" would mask ordinary words

# Header names whose values are credentials, and words that make any other header one.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_SECRET_WORDS = ("token", "secret", "password", "passwd", "api-key", "apikey", "key", "signature",
                 "credential", "session", "auth")  # fmt: skip

_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/\s@?#'\"]+)@")
_AUTH_VALUE = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?:bearer|basic|token|digest|aws4-hmac-sha256)\s+)?[^\s\"',;}]+"
)
_BEARER = re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}")
_SIGNED_QUERY = re.compile(
    r"(?i)(?P<name>[?&](?:x-amz-[a-z\-]+|signature|sig|token|access_token|api_key|apikey|key|password|"
    r"secret|awsaccesskeyid|credential|se|sp|sv)=)[^&\s\"'#]+"
)
_SECRET_PAIR = re.compile(
    r"(?i)(?P<name>\b(?:aws_)?(?:secret_access_key|secret_key|secret|password|passwd|private_key|"
    r"client_secret|session_token|security_token|x-amz-security-token|x-api-key|api_key|cookie|"
    r"signature|credential|token)"
    r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}&]+"
)


def redact_url(url: str) -> str:
    """``url`` without credentials: see the module docstring. Never raises."""
    try:
        p = urlsplit(url)
        port = p.port
    except ValueError:
        return "<unparseable url>"
    if not p.scheme and not p.netloc:
        return redact_text(url)
    host = p.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port:
        host = f"{host}:{port}"
    if p.username is not None or p.password is not None:
        host = f"{MASK}@{host}"
    out = f"{p.scheme}://{host}{p.path}" if p.scheme else f"{host}{p.path}"
    if p.query:
        pairs = parse_qsl(p.query, keep_blank_values=True)
        out += "?" + "&".join(f"{k}={MASK}" for k, _ in pairs) if pairs else "?" + MASK
    return out


def is_secret_header(name: str) -> bool:
    lower = name.strip().lower()
    return lower in _SECRET_HEADERS or lower.startswith("x-amz-") or any(w in lower for w in _SECRET_WORDS)


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header name → value, with credential values masked."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k): (MASK if is_secret_header(str(k)) else str(v)) for k, v in items}


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret and every credential-looking pattern replaced by ``***``."""
    if not text:
        return text
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group('name')}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m.group('scheme')} {MASK}", text)
    text = _SIGNED_QUERY.sub(lambda m: f"{m.group('name')}{MASK}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m.group('name')}{MASK}", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and formatted traceback) through ``redact_text``, also masking the
    exact ``secrets`` given (e.g. the pod's etcd password and token)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = {s for s in secrets if s}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the formatter's own error path
            return True
        record.msg = redact_text(message, self.secrets)
        record.args = None
        if record.exc_info:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.secrets)
        return True


def install_log_redaction(logger: logging.Logger | None = None, secrets: Iterable[str] = ()) -> None:
    """Add a RedactingFilter to every handler of ``logger`` (default: the root logger), masking ``secrets``
    too. Idempotent; a second call adds its secrets to the filters already there."""
    secrets = [s for s in secrets if s]
    for handler in (logger or logging.getLogger()).handlers:
        present = [f for f in handler.filters if isinstance(f, RedactingFilter)]
        if present:
            for f in present:
                f.secrets.update(secrets)
        else:
            handler.addFilter(RedactingFilter(secrets))
