"""Peer comparison with Ray Serve model multiplexing (``python -m loadtests.ray_serve``).

Split by interpreter: ``driver`` and ``control`` run in the mesh venv (the load, the mesh cluster, the report,
and the Ray host's process control); ``host`` and ``app`` run in the Ray venv (``scripts/ray_venv.sh``), where
Ray Serve and its own gRPC/protobuf live; ``codec`` (numpy only) runs in both. This module holds only the
wire names both sides share, so importing it costs nothing in either venv.
"""

APP_NAME = "v2"
"""The Serve application's name: the client sends it as ``application`` metadata to Ray's gRPC proxy."""
MODEL_ID_METADATA = "multiplexed_model_id"
"""Ray's gRPC metadata key for the multiplexed model id (the mesh's is ``mm-model-id``)."""
LOAD_MS_KEY = "x-load-ms"
"""Trailing metadata of a request that ran a model load on its replica: the load's duration in ms."""
REPLICA_KEY = "x-replica"
"""Trailing metadata beside ``LOAD_MS_KEY``: the id of the replica that loaded."""
