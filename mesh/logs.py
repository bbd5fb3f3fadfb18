"""Log output of a pod (and of a runtime): plain text or one JSON object per line, always redacted.

``configure_logging(level, fmt, fields)`` sets up the root logger on stderr:

- ``text`` (default): ``time level logger: message``;
- ``json`` (``MM_LOG_FORMAT=json``): ``{"ts": ISO-8601 UTC, "level", "logger", "msg", ...fields}`` per line, plus
  ``exc`` with the (redacted) traceback, and the fields of a record's ``request`` extra (the request log,
  ``mesh.dataplane.observe``) at the top level, so a log pipeline can filter on ``model_id``, ``route``,
  ``status`` or ``duration_ms`` without parsing text. ``fields`` (e.g. ``{"pod": "pod-0"}``) go on every line.

Every handler gets ``mesh.redact.RedactingFilter`` first, so message text and tracebacks are scrubbed of
credentials before either formatter sees them (the request log's fields hold ids, names, numbers only).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mesh.redact import install_log_redaction

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(self.fields)
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            out.update(request)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # set (redacted) by RedactingFilter
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(
    level: str, fmt: str = "text", fields: Mapping[str, Any] | None = None, *, secrets: Sequence[str] = ()
) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(fields) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    install_log_redaction(secrets=secrets)  # no credential (nor a secret setting's value) in a log line


def add_log_fields(fields: Mapping[str, Any]) -> None:
    """Add ``fields`` (e.g. the pod id, known only once the pod is built) to every JSON line from now on."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.fields.update(fields)
