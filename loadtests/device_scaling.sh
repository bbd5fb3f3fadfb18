#!/usr/bin/env bash
# loadtests.dataplane_scaling on a lent many-core machine (the device tool's nvidia-h200 kind: 16 cores,
# Python 3.12 with numpy, scikit-learn, psutil and prometheus-client, and nothing to download from).
#
#   loadtests/device_scaling.sh prepare   # here, once: the missing pieces into build/devscale (ignored, ~30 MB)
#   loadtests/device_scaling.sh run       # there: run(command="loadtests/device_scaling.sh run",
#                                         #            carry=["build/devscale"], timeout_s=540)
#
# prepare: cp312 wheels of what the mesh needs beyond that machine's packages (grpcio, grpcio-health-checking
# and protobuf at the versions of the generated code, httptools) and the etcd binary of this venv.
# run: installs them under /tmp/site, writes the one sample model the benchmark uses with that machine's
# scikit-learn (the full sample set needs xgboost, lightgbm and skl2onnx, which it does not have), then runs
# the GPU memory check (loadtests.gpu_meter_check: does the adapters' meter see a server's device memory?),
# then the benchmark for N = 1, 2, 4, 8 with 4 client processes, ModelReady then ModelInfer; tables and
# JSON results go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=build/devscale

prepare() {
  mkdir -p "$KIT/wheels" "$KIT/bin"
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$KIT/wheels" grpcio==1.85.1 grpcio-health-checking==1.85.1 protobuf==7.36.2 httptools==0.9.0
  cp "$(.venv/bin/python -c 'from mesh.devtools.etcd import find_etcd_binary; print(find_etcd_binary())')" "$KIT/bin/etcd"
  du -sh "$KIT"
}

run() {
  OUT=${OUT:-/tmp/devscale-out}
  mkdir -p "$OUT"
  echo "cores: $(nproc); $(python3 --version); tree: $(git log -1 --oneline 2>/dev/null || echo '?')"
  [ -f loadtests/dataplane_scaling.py ] || { echo "this tree has no loadtests/dataplane_scaling.py"; exit 3; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$KIT"/wheels/${DEVSCALE_WHEELS:-*}.whl
  export PYTHONPATH="/tmp/site:$PWD" PATH="$PWD/$KIT/bin:$PATH" PYTHONUNBUFFERED=1 GRPC_ENABLE_FORK_SUPPORT=0
  python3 - <<'EOF'
import json
from pathlib import Path

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from runtime_adapters.builtin.samples import _sklearn

out = Path("var/models").resolve()
x, y = load_iris(return_X_y=True)
x = x.astype("float32")
entry = _sklearn(out, "sklearn-iris-lr", "sklearn/iris-lr", LogisticRegression(max_iter=1000).fit(x, y), x[[60]])
(out / "manifest.json").write_text(json.dumps({"version": 1, "spec": {}, "models": [entry]}))
print("sample model written")
EOF
  timeout 120 python3 -m loadtests.gpu_meter_check --json "$OUT/gpu_meter.json" 2>&1 | tee "$OUT/gpu_meter.txt" || true
  # shellcheck disable=SC2206  # DEVSCALE_ARGS: other benchmark flags, word-split on purpose
  local common=(${DEVSCALE_ARGS:---processes 1 2 4 8 --client-processes 4 --connections 32 --concurrency 256 --seconds 8 --warmup 2})
  for method in ready infer; do
    python3 -m loadtests.dataplane_scaling "${common[@]}" --method "$method" 2>&1 | tee "$OUT/$method.md"
  done
  cp loadtests/results/dataplane_scaling-*.json "$OUT/" 2>/dev/null || true
}

"${1:?usage: $0 prepare|run}"
