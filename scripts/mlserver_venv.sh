#!/usr/bin/env bash
# Creates .venv-mlserver/: MLServer and its runtimes in their own virtualenv.
#
# Why a separate venv: mlserver 1.7.1 pins protobuf<7 while the mesh venv runs protobuf 7 / grpcio-tools 1.85
# (reference/deps.md §5). MLServer is a separate process behind the MLServer adapter, so it never shares an
# interpreter with the mesh. uvloop is pinned to 0.21.0: >=0.22 crash-loops MLServer's parallel workers
# (SeldonIO/MLServer#2286); the adapter also runs MLServer with parallel_workers=0.
#
# Idempotent: a stamp file records the pinned set; a second run with the same pins does nothing.
# Usage: scripts/mlserver_venv.sh [VENV_DIR]   (env PY picks the interpreter, default python3.11 or python3)
set -euo pipefail

VENV="${1:-.venv-mlserver}"
PINS="mlserver==1.7.1 mlserver-sklearn==1.7.1 mlserver-xgboost==1.7.1 uvloop==0.21.0"
STAMP="$VENV/.installed"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PINS" && -x "$VENV/bin/mlserver" ]]; then
    exit 0
fi

if [[ -z "${PY:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
# mlserver 1.7.1 supports Python >=3.9,<3.13.
"$PY" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] < (3, 13) else 1)' || {
    echo "error: $PY is $("$PY" -V 2>&1); MLServer 1.7.1 needs Python 3.9-3.12 (set PY=...)" >&2
    exit 2
}

start=$(date +%s)
rm -f "$STAMP"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $PINS
"$VENV/bin/python" -c 'import mlserver, mlserver_sklearn, mlserver_xgboost' >/dev/null
echo "$PINS" > "$STAMP"
echo "mlserver venv ready in $VENV ($(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1))"
