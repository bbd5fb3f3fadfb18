#!/usr/bin/env bash
# Smoke test of the built images as real containers, without Kubernetes: a runtime-builtin container and a
# mesh container share a unix socket directory (as the pod's emptyDir), the runtime reads sample models from
# a "PVC" directory through a storage-config directory (one file per key, as the Secret is mounted), a local
# etcd stands in for the StatefulSet; then `mesh apply` (from the mesh image) registers four models, each
# is inferred, and both containers are stopped with SIGTERM and must exit 0.
#
#   deploy/build-images.sh mesh runtime-builtin && deploy/smoke-test.sh
#
# Needs .venv (make venv: etcd and the sample models) and an engine: RUN="docker run" (default) or e.g.
# RUN="podman --storage-driver vfs --runtime runc run --ulimit nofile=4096:4096 --ulimit nproc=4096:4096"
# with IMAGES=localhost/modelmesh-py (what buildah/podman tag). RUNTIME=runtime-mlserver tests the MLServer
# image instead (sklearn and xgboost models). Containers use the host network, loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${RUN:-docker run}
ENGINE=${RUN% run*}
IMAGES=${IMAGES:-modelmesh-py}
TAG=${TAG:-dev}
RUNTIME=${RUNTIME:-runtime-builtin}
PORT=${PORT:-18533}
ETCD_PORT=${ETCD_PORT:-23999}
W=$(mktemp -d)
ETCD_PID=""

cleanup() {
    $ENGINE rm -f mm-smoke-mesh mm-smoke-runtime >/dev/null 2>&1 || true
    [[ -n "$ETCD_PID" ]] && kill "$ETCD_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W"/{sock,models,storage,pvc/models-pvc,etcd}
.venv/bin/python -m runtime_adapters.builtin.samples --out "$W/pvc/models-pvc" 2>/dev/null
echo '{"type": "pvc", "name": "models-pvc"}' >"$W/storage/samples"
chown -R 1000:1000 "$W/sock" "$W/models" 2>/dev/null || chmod 0777 "$W/sock" "$W/models"
MODELS=(iris-xgb iris-onnx iris-lgb)
RUNTIME_ARGS=(--host=127.0.0.1 --port=$((PORT + 52)) --socket=/var/run/mmesh/grpc.sock)
SERVING=()
if [[ "$RUNTIME" == runtime-mlserver ]]; then
    MODELS=(iris-xgb)
    RUNTIME_ARGS=(--start-mlserver "--mlserver-grpc=127.0.0.1:$((PORT + 53))" "${RUNTIME_ARGS[@]}")
    SERVING=(-e "INTERNAL_SERVING_GRPC_ADDRESS=127.0.0.1:$((PORT + 53))")
fi
{
    echo "owner: smoke"
    echo "models:"
    echo "  - {id: iris-lr, type: sklearn, path: sklearn/iris-lr, storageKey: samples}"
    echo "  - {id: iris-xgb, type: xgboost, path: xgboost/iris, storageKey: samples}"
    if [[ "$RUNTIME" != runtime-mlserver ]]; then
        echo "  - {id: iris-onnx, type: onnx, path: onnx/iris, storageKey: samples}"
        echo "  - {id: iris-lgb, type: lightgbm, path: lightgbm/iris, storageKey: samples}"
    fi
    echo "vmodels:"
    echo "  - {id: iris, target: iris-lr}"
} >"$W/models.yaml"

.venv/bin/etcd --name smoke --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "smoke=http://127.0.0.1:$((ETCD_PORT + 1))" --log-level error >"$W/etcd.log" 2>&1 &
ETCD_PID=$!

$RUN -d --name mm-smoke-runtime --network host -v "$W/sock:/var/run/mmesh" -v "$W/models:/models" \
    -v "$W/storage:/storage-config:ro" -v "$W/pvc:/pvc_mounts:ro" \
    -e CONTAINER_MEM_REQ_BYTES=1073741824 -e MEM_BUFFER_BYTES=402653184 -e STORAGE_CONFIG=/storage-config \
    "$IMAGES/$RUNTIME:$TAG" "${RUNTIME_ARGS[@]}" >/dev/null
$RUN -d --name mm-smoke-mesh --network host -v "$W/sock:/var/run/mmesh" \
    -e MM_ETCD_ENDPOINTS="127.0.0.1:$ETCD_PORT" -e MM_SVC_GRPC_HOST=127.0.0.1 -e MM_SVC_GRPC_PORT=$PORT \
    -e MM_METRICS_PORT=$((PORT + 1)) -e MM_ADVERTISE_ADDRESS="127.0.0.1:$PORT" \
    -e INTERNAL_GRPC_ADDRESS=unix:/var/run/mmesh/grpc.sock "${SERVING[@]}" "$IMAGES/mesh:$TAG" serve >/dev/null

mesh() { $RUN --rm --network host -v "$W/models.yaml:/config/models.yaml:ro" "$IMAGES/mesh:$TAG" --address "127.0.0.1:$PORT" "$@"; }
for _ in $(seq 1 90); do
    .venv/bin/python -m mesh.health check --address "127.0.0.1:$PORT" >/dev/null 2>&1 && break
    sleep 2
done
$ENGINE logs mm-smoke-runtime 2>&1 | tail -3
.venv/bin/python -m mesh.health check --address "127.0.0.1:$PORT"
mesh apply -f /config/models.yaml
for m in "${MODELS[@]}"; do mesh infer "$m" --data '[[5.1, 3.5, 1.4, 0.2]]' --datatype FP32 >/dev/null; done
mesh infer iris --vmodel --data '[[5.1, 3.5, 1.4, 0.2]]' --datatype FP32
mesh status
$ENGINE stop -t 60 mm-smoke-mesh >/dev/null
$ENGINE stop -t 20 mm-smoke-runtime >/dev/null
codes="$($ENGINE inspect mm-smoke-mesh --format '{{.State.ExitCode}}') $($ENGINE inspect mm-smoke-runtime --format '{{.State.ExitCode}}')"
[[ "$codes" == "0 0" ]] || { echo "error: exit codes after SIGTERM: $codes" >&2; exit 1; }
echo "smoke test passed ($RUNTIME): $((${#MODELS[@]} + 1)) models served from the images; both containers exited 0 on SIGTERM"
