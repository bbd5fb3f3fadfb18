"""The ``mesh`` command line: run a local cluster or one pod, and talk to a running pod.

Owns argument parsing and human-readable output only; the work is done elsewhere:
``mesh up`` → ``mesh.devtools.cluster.LocalCluster``; ``mesh serve`` → ``mesh.pod.main`` (the pod's own flags,
from ``mesh.settings``); every other subcommand → ``mesh.client.MeshClient`` against ``--address`` (one or
several comma-separated pods, default 127.0.0.1:8033, or ``MESH_ADDRESS``; a pod that is gone is skipped for
the next). ``--sync`` waits for loads with live progress on stderr (``mesh.progress``), as long as the pod's
load timeout allows. Failures print ``error: <CODE>: <message>`` on stderr and exit with status 1 (2 for
usage errors, as argparse does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh.progress import ProgressPrinter, human_bytes, wait_deadline_s, wait_for_models

DEFAULT_ADDRESS = "127.0.0.1:8033"
GLOB_CHARS = frozenset("*?[")
_SUFFIXES = {"k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


class _Stop(Exception):
    """Raised from the SIGTERM handler of ``mesh up`` so cleanup runs on the main thread."""


def parse_bytes(text: str) -> int:
    """``536870912``, ``512Mi``, ``2G`` → bytes."""
    t = text.strip().lower().removesuffix("b")
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * _SUFFIXES[suffix])
    return int(t)


def human_age(ms: int) -> str:
    if ms <= 0:
        return "-"
    s = ms // 1000
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def format_cluster_status(st: dict[str, Any], now_ms: int | None = None) -> str:
    """The ``mesh status`` tables: pods, then models with where their copies are."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    pods = [
        (
            i["instance_id"],
            i["address"],
            human_bytes(i["capacity_bytes"]),
            human_bytes(i["used_bytes"]),
            human_age(i["lru_age_ms"]),
            i["model_count"],
            i["loads_in_progress"],
            i["rpm"],
            ("leader" if i["leader"] else "") + (" shutting-down" if i["shutting_down"] else ""),
        )
        for i in st["instances"]
    ]
    out = [f"pods (as seen by {st['responding_instance'] or '?'}):"]
    out.append(
        format_table(
            ("ID", "ADDRESS", "CAPACITY", "USED", "LRU AGE", "MODELS", "LOADING", "RPM", "ROLE"), pods
        )
    )
    models = [
        (
            m["model_id"],
            m["type"],
            m["status"],
            human_bytes(m["size_bytes"]) if m.get("size_bytes") else "-",
            ",".join(m["loaded_on"]) or "-",
            ",".join(m["loading_on"]) or "-",
            ",".join(m["failed_on"]) or "-",
            human_age(now_ms - m["last_used_ms"]) if m["last_used_ms"] else "-",
        )
        for m in st["models"]
    ]
    out.append("")
    total = st.get("total_models")
    shown = f"{len(models)} of {total}" if total is not None and total != len(models) else f"{len(models)}"
    out.append(f"models ({shown}):")
    out.append(
        format_table(
            ("ID", "TYPE", "STATUS", "SIZE", "LOADED ON", "LOADING ON", "FAILED ON", "LAST USED"), models
        )
    )
    errors = [(m["model_id"], e) for m in st["models"] for e in m["errors"]]
    if errors:
        out.append("")
        out.extend(f"{mid}: {err}" for mid, err in errors)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------
# Parsing


def _client_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Connection flags, accepted before or after the subcommand (sub-level ones only override if given)."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    parser.add_argument(
        "--address",
        default=d(os.environ.get("MESH_ADDRESS", DEFAULT_ADDRESS)),
        help="host:port of a mesh pod, or several comma-separated (a pod that is gone is skipped for the "
        "next) [env MESH_ADDRESS, default 127.0.0.1:8033]",
    )
    parser.add_argument("--tls-ca", default=d(None), help="PEM CA bundle (enables TLS)")
    parser.add_argument("--tls-cert", default=d(None), help="PEM client certificate (mTLS)")
    parser.add_argument("--tls-key", default=d(None), help="PEM client key (mTLS)")
    parser.add_argument("--timeout", type=float, default=d(30.0), help="per-call deadline in seconds")


def _wait_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --sync: give up after this long (default: the pod's load timeout + 30s)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh", description="A multi-model serving mesh coordinated through etcd."
    )
    _client_flags(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        _client_flags(sp, top=False)
        return sp

    up = sub.add_parser("up", help="start a local cluster (etcd + N pods) in the foreground")
    up.add_argument("--pods", type=int, default=1, help="number of pods (default 1)")
    up.add_argument("--port", type=int, default=8033, help="external port of pod 0; pod i gets PORT+i")
    up.add_argument(
        "--capacity", type=parse_bytes, default=512 * 1024**2, help="runtime capacity per pod (512Mi)"
    )
    up.add_argument(
        "--models-dir", default="var/models", help="root of local model paths (default var/models)"
    )
    up.add_argument("--etcd", default=None, help="use this etcd host:port instead of an embedded one")
    up.add_argument(
        "--runtime", choices=["builtin", "mlserver"], default="builtin", help="runtime beside each pod"
    )
    up.add_argument("--storage-config", default=None, help="storage-config JSON file for the puller")
    up.add_argument("--data-dir", default=".mesh", help="pod logs and runtime model dirs (default .mesh)")
    up.add_argument("--kv-root", default="/mm/local/", help="etcd key prefix of this cluster")
    up.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for SERVING")
    up.add_argument(
        "--dataplane-processes",
        type=int,
        default=1,
        help="processes serving each pod's port (MM_DATAPLANE_PROCESSES, default 1)",
    )

    sub.add_parser("serve", help="run one pod (flags: mesh serve --help)", add_help=False)

    sp = cmd("register", "register a model (does not load it unless --load-now)")
    sp.add_argument("model_id")
    sp.add_argument(
        "--type", required=True, dest="model_type", help="model type, e.g. sklearn, xgboost, onnx"
    )
    sp.add_argument("--path", required=True, help="model path or URI (local paths relative to --models-dir)")
    sp.add_argument("--key", default="", help="storage key JSON (which storage-config entry, bucket, …)")
    sp.add_argument("--load-now", action="store_true", help="load a copy right away")
    sp.add_argument(
        "--sync",
        action="store_true",
        help="with --load-now: wait until loaded (or failed), showing progress on stderr",
    )
    _wait_flag(sp)
    sp.add_argument("--min-copies", type=int, default=0, help="keep at least this many copies loaded")
    sp.add_argument("--max-copies", type=int, default=0, help="never scale above this many copies")

    cmd("unregister", "unregister a model (unloads every copy)").add_argument("model_id")

    from mesh import apply

    apply.add_arguments(cmd("apply", "reconcile models and vmodels with a file (mesh/apply.py)"))

    sp = cmd("status", "cluster status (pods and models, page by page), or one model's status")
    sp.add_argument(
        "model_id", nargs="?", help="one model's status; with * ? [ ] a glob that filters the models table"
    )
    sp.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sp.add_argument("--type", dest="model_type", default="", help="only models of this type")
    sp.add_argument(
        "--status",
        dest="model_status",
        default="",
        type=str.upper,
        choices=("NOT_LOADED", "LOADING", "LOADED", "LOADING_FAILED"),
        help="only models in this state",
    )
    sp.add_argument("--pod", default="", help="only models with a copy (loaded, loading, failed) on this pod")
    sp.add_argument("--page-size", type=int, default=1000, help="models per request (the pod caps it)")
    sp.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    sp.add_argument("--count", type=int, default=0, help="with --watch: stop after this many redraws")

    sp = cmd("ensure-loaded", "make sure a copy of the model is loaded")
    sp.add_argument("model_id")
    sp.add_argument(
        "--sync", action="store_true", help="wait until loaded (or failed), showing progress on stderr"
    )
    _wait_flag(sp)

    sp = cmd("infer", "run a V2 ModelInfer through the mesh")
    sp.add_argument("model_id")
    sp.add_argument(
        "--data", required=True, help='JSON: list of rows, or {"input": rows}; @FILE reads a file'
    )
    sp.add_argument("--vmodel", action="store_true", help="MODEL_ID is a vModel id")
    sp.add_argument("--raw", action="store_true", help="send raw_input_contents instead of typed contents")
    sp.add_argument("--datatype", default=None, help="cast inputs to this V2 datatype (e.g. FP32)")
    sp.add_argument("--input-name", default="input-0", help="name of the input when --data is a list")

    vm = sub.add_parser("vmodel", help="virtual models (aliases): set, delete, status")
    vsub = vm.add_subparsers(dest="vcommand", required=True, metavar="ACTION")
    sp = vsub.add_parser("set", help="create or move a vModel to a target model")
    _client_flags(sp, top=False)
    sp.add_argument("vmodel_id")
    sp.add_argument("--target", required=True, help="target (concrete) model id")
    sp.add_argument("--type", dest="model_type", default=None, help="register the target with this type")
    sp.add_argument("--path", default=None, help="register the target with this path")
    sp.add_argument("--key", default=None, help="register the target with this storage key")
    sp.add_argument("--owner", default="")
    sp.add_argument("--auto-delete-target", action="store_true")
    sp.add_argument("--load-now", action="store_true")
    sp.add_argument("--sync", action="store_true")
    sp.add_argument("--expected-target", default="")
    for action, help_ in (("delete", "delete a vModel"), ("status", "show a vModel's status")):
        sp = vsub.add_parser(action, help=help_)
        _client_flags(sp, top=False)
        sp.add_argument("vmodel_id")
        sp.add_argument("--owner", default="")
    return p


# --------------------------------------------------------------------------------------------------------
# Commands


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode(errors="replace")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _load_data(text: str) -> Any:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        from mesh.client import MeshClientError

        raise MeshClientError("INVALID_ARGUMENT", f"--data is not valid JSON: {exc}") from exc


def _client(args: argparse.Namespace):
    from mesh.client import MeshClient

    return MeshClient(
        args.address, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key, timeout=args.timeout
    )


def load_timeout_ms(client) -> int:
    """The pod's load timeout (0 when it does not say: an older pod, or the call failed)."""
    from mesh.client import MeshClientError

    try:
        return int(client.cluster_status_page(include_models=False)["load_timeout_ms"])
    except MeshClientError:
        return 0


def model_sizes(client, model_ids) -> dict[str, int]:
    """Known sizes of these models, from the cluster status (one filtered page per model)."""
    import glob

    out = {}
    for model_id in model_ids:
        page = client.cluster_status_page(model_id_glob=glob.escape(model_id), page_size=1)
        for m in page["models"]:
            out[m["model_id"]] = m["size_bytes"]
    return out


def wait_loaded(client, model_ids: Sequence[str], wait_s: float | None, stream=None) -> int:
    """Wait for the models to load, with progress on stderr; print the final status(es) as JSON on stdout.
    Exit status 0 when every model loaded, 1 when one failed, vanished or the wait ran out."""
    timeout_s = wait_deadline_s(load_timeout_ms(client), wait_s)
    printer = ProgressPrinter(stream)
    progress, finished = wait_for_models(
        client.status,
        model_ids,
        timeout_s=timeout_s,
        on_update=printer,
        sizes=lambda ids: model_sizes(client, ids),
    )
    printer.finish()
    for p in progress:
        _print_json(p.final)
    rc = 0
    for p in progress:
        if p.status == "LOADING_FAILED":
            print(
                f"error: LOADING_FAILED: {p.model_id}: {'; '.join(p.errors) or 'load failed'}",
                file=sys.stderr,
            )
            rc = 1
        elif p.status == "NOT_FOUND":
            print(f"error: NOT_FOUND: {p.model_id} is not registered (any more)", file=sys.stderr)
            rc = 1
        elif not finished and not p.done:
            print(
                f"error: DEADLINE_EXCEEDED: {p.model_id} still {p.status} after {timeout_s:.0f}s "
                "(--wait to wait longer)",
                file=sys.stderr,
            )
            rc = 1
    return rc


def _status_filters(args: argparse.Namespace) -> dict[str, Any]:
    glob_ = args.model_id if args.model_id and GLOB_CHARS & set(args.model_id) else ""
    return {
        "page_size": args.page_size,
        "model_id_glob": glob_,
        "model_type": args.model_type,
        "status": args.model_status,
        "pod": args.pod,
    }


def run_status(client, args: argparse.Namespace) -> int:
    """``mesh status``: one model's status, or the cluster (every page, filtered), once or ``--watch``."""
    if args.model_id and not GLOB_CHARS & set(args.model_id):
        _print_json(client.status(args.model_id))
        return 0
    filters = _status_filters(args)
    redraws = 0
    try:
        while True:
            st = client.cluster_status(**filters)
            if args.json:
                text = json.dumps(st, indent=2)
            else:
                text = format_cluster_status(st)
            if args.watch is None:
                print(text)
                return 0
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")  # home + clear: redraw in place
            stamp = time.strftime("%H:%M:%S")
            print(
                f"every {args.watch:g}s at {stamp}, via {client.target} (Ctrl-C to stop)\n{text}", flush=True
            )
            redraws += 1
            if args.count and redraws >= args.count:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _run_client_command(args: argparse.Namespace) -> int:
    with _client(args) as c:
        match args.command:
            case "apply":
                from mesh import apply

                return apply.run(args, c)
            case "register":
                status = c.register(
                    args.model_id,
                    args.model_type,
                    args.path,
                    args.key,
                    args.load_now,
                    False,
                    min_copies=args.min_copies,
                    max_copies=args.max_copies,
                )
                if args.sync and args.load_now:
                    return wait_loaded(c, [args.model_id], args.wait)
                _print_json(status)
            case "unregister":
                c.unregister(args.model_id)
                print(f"unregistered {args.model_id}")
            case "status":
                return run_status(c, args)
            case "ensure-loaded":
                status = c.ensure_loaded(args.model_id, sync=False)
                if args.sync:
                    return wait_loaded(c, [args.model_id], args.wait)
                _print_json(status)
            case "infer":
                data = _load_data(args.data)
                out = c.infer(
                    args.model_id,
                    data,
                    vmodel=args.vmodel,
                    raw=args.raw,
                    datatype=args.datatype,
                    input_name=args.input_name,
                )
                _print_json(out)
            case "vmodel":
                if args.vcommand == "set":
                    _print_json(
                        c.set_vmodel(
                            args.vmodel_id,
                            args.target,
                            args.model_type,
                            args.path,
                            args.key,
                            owner=args.owner,
                            auto_delete_target=args.auto_delete_target,
                            load_now=args.load_now,
                            sync=args.sync,
                            expected_target=args.expected_target,
                        )
                    )
                elif args.vcommand == "delete":
                    c.delete_vmodel(args.vmodel_id, owner=args.owner)
                    print(f"deleted vmodel {args.vmodel_id}")
                else:
                    _print_json(c.vmodel_status(args.vmodel_id, owner=args.owner))
    return 0


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


class UpReporter:
    """Prints ``mesh up``'s start-up as it happens: etcd, each pod started, each pod SERVING."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.t0 = time.monotonic()
        self.started: dict[int, float] = {}

    def __call__(self, what: str, detail: Any) -> None:
        now = time.monotonic()
        if what == "etcd":
            print(f"etcd: up on {detail} after {now - self.t0:.1f}s", file=self.stream, flush=True)
        elif what == "pod-started":
            self.started[detail.index] = now
            print(
                f"pod-{detail.index}: started (pid {detail.pid}), runtime starting on 127.0.0.1:{detail.runtime_port}",
                file=self.stream,
                flush=True,
            )
        elif what == "pod-serving":
            took = now - self.started.get(detail.index, self.t0)
            print(
                f"pod-{detail.index}: SERVING on {detail.address} after {took:.1f}s",
                file=self.stream,
                flush=True,
            )


def pod_addresses(pod) -> list[tuple[str, str]]:
    """Every address of a ``mesh up`` pod, by name (REST only when the cluster gave the pod a REST port)."""
    rows = [("grpc", pod.address)]
    rest_port = getattr(pod, "rest_port", None)
    rows.append(("rest", f"http://127.0.0.1:{rest_port}/v2" if rest_port else "off"))
    rows.append(("metrics", f"http://127.0.0.1:{pod.metrics_port}/metrics" if pod.metrics_port else "off"))
    rows.append(("runtime", f"127.0.0.1:{pod.runtime_port}"))
    rows.append(("log", str(pod.log_path)))
    return rows


def run_up(args: argparse.Namespace) -> int:
    """``mesh up``: start the cluster, report each part as it starts, print every address, stay in the
    foreground until Ctrl-C / SIGTERM."""
    from mesh.devtools.cluster import ClusterStartError, LocalCluster

    models_dir = Path(args.models_dir)
    if not models_dir.is_dir():
        print(
            f"warning: models dir {models_dir} does not exist (local model paths will not resolve)",
            file=sys.stderr,
        )
    cluster = LocalCluster(
        pods=args.pods,
        base_port=args.port,
        capacity=args.capacity,
        models_dir=models_dir,
        etcd=args.etcd,
        data_dir=args.data_dir,
        runtime=args.runtime,
        storage_config=args.storage_config,
        kv_root=args.kv_root,
        startup_timeout=args.startup_timeout,
        on_event=UpReporter(),
        dataplane_processes=args.dataplane_processes,
    )
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    reported: set[int] = set()
    try:
        print(f"starting {args.pods} pod(s); logs in {cluster.data_dir}", flush=True)
        cluster.start()  # a signal during start-up interrupts its own clean-up; the finally below redoes it
        print(f"etcd: {cluster.etcd_endpoint}  (kv root {args.kv_root})")
        for pod in cluster.pods:
            print(f"pod-{pod.index} (pid {pod.pid}):")
            for name, where in pod_addresses(pod):
                print(f"  {name:<8} {where}")
        print(f"clients: --address {','.join(cluster.addresses)}")
        print("ready; Ctrl-C to stop", flush=True)
        while True:
            for pod in cluster.dead_pods():
                if pod.index not in reported:
                    reported.add(pod.index)
                    print(
                        f"warning: pod-{pod.index} exited with {pod.proc.returncode}",
                        file=sys.stderr,
                        flush=True,
                    )
            if len(reported) == len(cluster.pods):
                print("error: UNAVAILABLE: every pod has exited", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print("stopping…", flush=True)
        return 0
    except ClusterStartError as exc:
        print(f"error: UNAVAILABLE: {exc}", file=sys.stderr)
        return 1
    finally:
        # Ignore further signals while tearing down, so a second Ctrl-C cannot orphan a process.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cluster.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        from mesh.pod import main as pod_main

        return pod_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "up":
        from mesh.devtools.cluster import disable_grpc_fork_handlers

        disable_grpc_fork_handlers()
        return run_up(args)
    from mesh.client import MeshClientError

    try:
        return _run_client_command(args)
    except MeshClientError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: CLIENT: {exc}", file=sys.stderr)
        return 1
