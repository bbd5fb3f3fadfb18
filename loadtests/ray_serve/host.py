"""The Ray side of the peer comparison: one private Ray instance with Serve's gRPC proxy, driven over stdin.

Runs in the Ray venv as ``.venv-ray/bin/python -m loadtests.ray_serve.host --temp-dir DIR --grpc-port P
--http-port Q``, started by the benchmark driver (``loadtests.ray_serve.driver``) in its own process group.
It starts a local Ray instance of its own (``ray.init``: no dashboard, node address 127.0.0.1, temp/session dir
``--temp-dir`` under ``var/``, usage stats off, worker output not forwarded), starts Serve with the HTTP proxy on
127.0.0.1 and the gRPC proxy serving the V2 ``GRPCInferenceService`` compiled in the Ray venv (note: Ray binds
its gRPC proxy to ``[::]:port``, not to a chosen host), then answers one JSON command per stdin line with one
line ``@@ {json}`` on stdout (other stdout lines are Ray's and are ignored by the driver):

    {"op": "deploy", "files": {id: path}, "replicas": n, "max_models": m, "max_ongoing": k}
        -> {"ok": true, "seconds": s}   (deletes the previous application first: every deployment starts
           with cold replicas, as every mesh scenario starts with a fresh cluster)
    {"op": "delete"} -> {"ok": true}
    {"op": "quit"}   -> {"ok": true}, then serve.shutdown() and ray.shutdown()

The first line written is ``@@ {"event": "ready", "versions": {...}}``. On stdin EOF, SIGTERM or any error
it shuts Serve and its Ray instance down the same way; it never touches another Ray instance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from typing import Any

from loadtests.ray_serve import APP_NAME

SERVICER = "grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
MARK = "@@ "


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def versions() -> dict[str, str]:
    import google.protobuf
    import grpc
    import joblib
    import numpy
    import ray
    import sklearn

    return {
        "python": sys.version.split()[0],
        "ray": ray.__version__,
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "joblib": joblib.__version__,
    }


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.ray_serve.host", description=__doc__.splitlines()[0]
    )
    p.add_argument("--temp-dir", required=True, help="Ray's temp/session directory (absolute, short)")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1, help="Ray's logical CPUs")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no phone-home attempt; read by ray.init
    import ray
    from ray import serve

    from loadtests.ray_serve.app import build_app

    started = False
    try:
        ray.init(
            num_cpus=args.num_cpus,
            include_dashboard=False,
            _temp_dir=args.temp_dir,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        started = True
        serve.start(
            http_options={"host": "127.0.0.1", "port": args.http_port},
            grpc_options={"port": args.grpc_port, "grpc_servicer_functions": [SERVICER]},
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        reply({"event": "ready", "versions": versions()})
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            op = cmd.get("op")
            try:
                if op == "deploy":
                    t0 = time.perf_counter()
                    if APP_NAME in serve.status().applications:
                        serve.delete(APP_NAME)
                    app = build_app(
                        cmd["files"],
                        replicas=int(cmd["replicas"]),
                        max_models=int(cmd["max_models"]),
                        max_ongoing=int(cmd["max_ongoing"]),
                    )
                    serve.run(app, name=APP_NAME, route_prefix="/" + APP_NAME)
                    reply({"ok": True, "seconds": round(time.perf_counter() - t0, 2)})
                elif op == "delete":
                    if APP_NAME in serve.status().applications:
                        serve.delete(APP_NAME)
                    reply({"ok": True})
                elif op == "quit":
                    reply({"ok": True})
                    break
                else:
                    reply({"ok": False, "error": f"unknown op {op!r}"})
            except Exception as exc:  # reported to the driver, which stops the run
                reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
        return 0
    finally:
        if started:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
