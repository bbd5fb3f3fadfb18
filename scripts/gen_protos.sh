#!/usr/bin/env bash
# Regenerates the Python code for protos/ (run from anywhere; uses the project venv's grpc_tools).
# Files are compiled with their repository-relative paths so descriptor names ("protos/mmesh/...")
# never clash with other libraries' bare "rpc.proto"/"kv.proto" in the process-wide pool.
# protos/etcd/ holds etcd's v3 API (KV, Watch, Lease, Auth) restated from etcd-io/etcd's api/*.proto
# (names, field numbers and types; no gogoproto/google.api/versionpb options), so the etcd client is ours
# and pins no etcd client package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PROTOS=(
  protos/mmesh/model_mesh.proto protos/mmesh/model_runtime.proto protos/inference/grpc_predict_v2.proto
  protos/meshadmin/admin.proto protos/meshlocal/local.proto
  protos/etcd/mvccpb/kv.proto protos/etcd/authpb/auth.proto protos/etcd/etcdserverpb/rpc.proto
)
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. "${PROTOS[@]}"
for d in protos protos/mmesh protos/inference protos/meshadmin protos/meshlocal protos/etcd protos/etcd/mvccpb \
  protos/etcd/authpb protos/etcd/etcdserverpb; do
  touch "$d/__init__.py"
done
