#!/usr/bin/env bash
# Regenerates the Python code for protos/ (run from anywhere; uses the project venv's grpc_tools).
# Files are compiled with their repository-relative paths so descriptor names ("protos/mmesh/...")
# never clash with other libraries' bare "rpc.proto"/"kv.proto" in the process-wide pool.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
  protos/mmesh/model_mesh.proto protos/mmesh/model_runtime.proto protos/inference/grpc_predict_v2.proto protos/meshadmin/admin.proto protos/meshlocal/local.proto
touch protos/__init__.py protos/mmesh/__init__.py protos/inference/__init__.py protos/meshadmin/__init__.py protos/meshlocal/__init__.py
