"""Storage providers: one module per protocol (``s3`` for boto3, ``minio_client``, ``http``).

Owns the choice of provider by name. Local/PVC storage has no provider: it is never copied (see
``puller.pull``). Provider modules are imported on first use, so a pod that only reads local models never
imports boto3 or minio.
"""

from __future__ import annotations

from puller.providers.base import Provider
from puller.settings import PullerSettings


def make_provider(name: str, settings: PullerSettings) -> Provider:
    if name == "boto3":
        from puller.providers.s3 import Boto3Provider

        return Boto3Provider(settings)
    if name == "minio":
        from puller.providers.minio_client import MinioProvider

        return MinioProvider(settings)
    if name == "http":
        from puller.providers.http import HttpProvider

        return HttpProvider(settings)
    raise ValueError(f"unknown storage provider {name!r}")
