#!/usr/bin/env bash
# Creates .venv-ray/: Ray Serve, for the peer comparison benchmark (loadtests/ray_serve), in its own virtualenv.
#
# Why a separate venv: Ray brings its own grpcio/protobuf/pydantic/aiohttp stack and dozens of packages the mesh
# does not need; keeping it out of .venv keeps the mesh's pinned set (requirements.lock) what the tests run.
# scikit-learn, numpy and joblib are pinned to the mesh venv's versions so both systems unpickle the same sample
# models (runtime_adapters/builtin/samples.py) with the same library. The KServe V2 proto is compiled here with
# this venv's own grpcio-tools (into .venv-ray/v2proto, put on sys.path by a .pth file) so Ray's workers, which
# run this venv's interpreter, can import it without the mesh's protos package (protobuf gencode must match the
# protobuf runtime it runs on).
#
# Idempotent: a stamp file records the pinned set and the proto's checksum; a second run with the same pins does
# nothing. Not part of `make test`. Usage: scripts/ray_venv.sh [VENV_DIR]
# (env PY picks the interpreter, default python3.11 or python3; Ray 2.60 needs Python >= 3.10).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv-ray}"
# grpcio/grpcio-tools at the mesh venv's version: same gRPC core on both sides, and protoc emits code for it.
PINS="ray[serve]==2.60.0 scikit-learn==1.9.1 numpy==2.4.6 joblib==1.6.0 grpcio==1.85.1 grpcio-tools==1.85.1"
PROTO=protos/inference/grpc_predict_v2.proto
STAMP="$VENV/.installed"
WANT="$PINS $(sha256sum "$PROTO" | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    exit 0
fi

if [[ -z "${PY:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else 1)' || {
    echo "error: $PY is $("$PY" -V 2>&1); Ray 2.60 needs Python >= 3.10 (set PY=...)" >&2
    exit 2
}

start=$(date +%s)
rm -f "$STAMP"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $PINS

GEN="$(cd "$VENV" && pwd)/v2proto"
rm -rf "$GEN"
mkdir -p "$GEN"
# Compiled from its own directory: the module is the top-level grpc_predict_v2_pb2 (descriptor name
# "grpc_predict_v2.proto"), distinct from the mesh's protos.inference package.
"$VENV/bin/python" -m grpc_tools.protoc -I "$(dirname "$PROTO")" --python_out="$GEN" --grpc_python_out="$GEN" \
    "$(basename "$PROTO")"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$GEN" > "$SITE/mesh_v2proto.pth"

"$VENV/bin/python" -c 'import ray, ray.serve, sklearn, joblib, grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc' >/dev/null
echo "$WANT" > "$STAMP"
echo "ray venv ready in $VENV ($(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1))"
