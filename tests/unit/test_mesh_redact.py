"""mesh.redact: URLs, headers, free text and log records lose their credentials, and nothing else."""

from __future__ import annotations

import logging

import pytest

from mesh.redact import RedactingFilter, redact_headers, redact_text, redact_url
from puller.errors import InvalidStorageConfig
from puller.storage_config import StorageConfig

PW = "hunter2-pw"


def test_urls():
    assert redact_url(f"https://alice:{PW}@h.example:8443/base/m.bin?x=1#frag") == (
        "https://***@h.example:8443/base/m.bin?x=***"
    )
    signed = "https://b.s3.amazonaws.com/k?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA%2F1"
    assert redact_url(signed) == "https://b.s3.amazonaws.com/k?X-Amz-Signature=***&X-Amz-Credential=***"
    assert redact_url("http://[::1]:9000/p") == "http://[::1]:9000/p"
    assert redact_url("http://h:99999999/") == "<unparseable url>"
    assert redact_url("plain/path") == "plain/path"


def test_headers():
    shown = redact_headers({"Authorization": "Bearer t0ken", "X-Amz-Security-Token": "s", "Accept": "a/b",
                            "X-Api-Key": "k", "Cookie": "c"})  # fmt: skip
    assert shown == {"Authorization": "***", "X-Amz-Security-Token": "***", "Accept": "a/b",
                     "X-Api-Key": "***", "Cookie": "***"}  # fmt: skip


def test_free_text():
    text = (
        f"GET http://bob:{PW}@10.0.0.1:9000/x failed; Authorization: Bearer abc.def-ghi; "
        f'{{"secret_access_key": "wJalrXUtnFEMI"}} url?X-Amz-Signature=deadbeef&ok=1 '
        "aws_secret_access_key=AbCdEf123 token=tkn-987654"
    )
    out = redact_text(text, secrets=["s3cr3t-known", "abc"])  # too-short secrets are not used
    for leaked in (PW, "abc.def-ghi", "wJalrXUtnFEMI", "deadbeef", "AbCdEf123", "tkn-987654"):
        assert leaked not in out, (leaked, out)
    assert "http://***@10.0.0.1:9000/x" in out and "&ok=1" in out
    assert redact_text("the value s3cr3t-known appeared", ["s3cr3t-known"]) == "the value *** appeared"


def test_logging_filter_scrubs_messages_and_tracebacks():
    handler = logging.Handler()
    records: list[str] = []
    handler.emit = lambda r: records.append(logging.Formatter().format(r))  # type: ignore[method-assign]
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("endpoint %s down", f"http://u:{PW}@h/")
        try:
            raise ValueError(f"cannot reach https://u:{PW}@h/")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    assert len(records) == 2 and all(PW not in r for r in records)
    assert "Traceback" in records[1] and "https://***@h/" in records[1]


def test_storage_entries_never_show_credentials():
    cfg = StorageConfig(
        {
            "web": {"type": "http", "url": f"https://alice:{PW}@h.example/base",
                    "headers": {"Authorization": "Bearer tok-123456"}},
            "s3": {"type": "s3", "endpoint_url": "http://127.0.0.1:9000", "secret_access_key": "s3cr3t-value"},
            "s3pw": {"type": "s3", "endpoint_url": f"http://key:{PW}@127.0.0.1:9000"},
        },
        pvc_mounts_dir=__import__("pathlib").Path("/pvc"),
    )  # fmt: skip
    for key in ("web", "s3"):
        e = cfg.entry(key)
        for text in (repr(e), str(e), e.where()):
            assert PW not in text and "tok-123456" not in text and "s3cr3t-value" not in text, text
    assert cfg.entry("web").where() == "http storage 'web' at h.example"
    assert cfg.entry("s3").where() == "s3 storage 's3' at 127.0.0.1:9000"
    assert set(cfg.secrets()) >= {PW, "Bearer tok-123456", "s3cr3t-value"}
    with pytest.raises(InvalidStorageConfig) as info:  # S3 credentials belong in their own fields
        cfg.entry("s3pw")
    assert "must not hold user:password@" in info.value.message and PW not in info.value.message
