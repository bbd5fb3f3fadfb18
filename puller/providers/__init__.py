"""Storage providers: one module per protocol (``s3`` for boto3, ``minio_client``, ``http``).

Owns the choice of provider by name. Local/PVC storage has no provider: it is never copied (see
``puller.pull``). Provider modules are imported on first use, so a pod that only reads local models never
imports boto3 or minio. The MinIO client is an optional extra (``modelmesh-py[minio]``): without it, an entry
that needs it fails its loads with ``ClientNotInstalled`` (FAILED_PRECONDITION) saying so.
"""

from __future__ import annotations

from puller.errors import ClientNotInstalled
from puller.providers.base import Provider
from puller.settings import PullerSettings


def make_provider(name: str, settings: PullerSettings, *, storage_key: str = "") -> Provider:
    if name == "boto3":
        from puller.providers.s3 import Boto3Provider

        return Boto3Provider(settings)
    if name == "minio":
        try:
            from puller.providers.minio_client import MinioProvider
        except ModuleNotFoundError as exc:  # the optional "minio" extra is not installed
            if exc.name != "minio":
                raise
            raise ClientNotInstalled(storage_key=storage_key, client="MinIO", extra="minio") from None
        return MinioProvider(settings)
    if name == "http":
        from puller.providers.http import HttpProvider

        return HttpProvider(settings)
    raise ValueError(f"unknown storage provider {name!r}")
