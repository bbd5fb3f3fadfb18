"""The model puller: fetches model artifacts from S3, MinIO, HTTP(S) or mounted storage into the pod's
model directory. Called by the runtime side inside loadModel (the mesh process never does storage I/O).

Public surface: ``Puller``, ``LocalArtifact``, ``PullerSettings`` and the errors in ``puller.errors``.
See docs/storage.md.
"""

from puller.pull import LocalArtifact, Puller
from puller.settings import PullerSettings

__all__ = ["LocalArtifact", "Puller", "PullerSettings"]
