"""Structural checks of the observability configuration (no network, no Docker, no cluster).

- collector-config/*.yaml: every pipeline component defined and every defined one used;
  memory_limiter first and batch last; spanmetrics fed from the unsampled stream; the
  settings the dashboards rely on (units, buckets, exemplars, namespace/pod labels);
- ports and names agree between the collector configs, deploy/compose/, deploy/prometheus/,
  deploy/grafana/ and any OpenTelemetry Collector Service under k8s/;
- every metric and label name in the Prometheus rules and the Grafana dashboard/datasources
  exists in what Voxline exports — derived from the telemetry library itself
  (tests/prometheus_harness.voxline_metric_names) — or in what the collector's connectors and
  the recording rules produce;
- ``promtool check config``, ``promtool check rules`` and ``promtool test rules`` pass.
  promtool is required (CI installs it): a missing promtool FAILS with the install hint.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_harness import voxline_metric_names

from services.runtime.config import DEFAULT_PORTS
from telemetry import names
from telemetry.instruments import DURATION_BUCKETS_S
from telemetry.prometheus import _label_name, prometheus_name

ROOT = Path(__file__).resolve().parents[1]
COLLECTOR_DIR = ROOT / "collector-config"
COLLECTOR_PROD = COLLECTOR_DIR / "otelcol.yaml"
COLLECTOR_LOCAL = COLLECTOR_DIR / "otelcol-local.yaml"
COLLECTOR_CONFIGS = [COLLECTOR_PROD, COLLECTOR_LOCAL]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yaml"
TEMPO_COMPOSE = COMPOSE_DIR / "tempo.yaml"
PROM_DIR = ROOT / "deploy" / "prometheus"
PROM_CONFIGS = [PROM_DIR / "prometheus.yml", PROM_DIR / "prometheus-local.yml"]
PROM_K8S = PROM_DIR / "prometheus-k8s.yml"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yaml"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
K8S_DIR = ROOT / "k8s"

VOXLINE_SERVICES = ("gateway", "frontend", "acoustic", "vocoder")
PROMTOOL_HINT = (
    "promtool not found: install Prometheus (apt-get install -y --no-install-recommends "
    "prometheus; Debian 2.42 ships promtool) — CI installs it, so this test never skips"
)
# The pipeline order rules, with the reason shown on failure.
FIRST_PROCESSOR = "memory_limiter"
LAST_PROCESSOR = "batch"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


# ---------------------------------------------------------------------------------------------
# What exists in Prometheus
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voxline_metrics() -> dict[str, Any]:
    return voxline_metric_names()


def spanmetrics_names(config: dict[str, Any]) -> set[str]:
    """Prometheus names of the spanmetrics connector's output (namespace + calls/duration)."""
    out: set[str] = set()
    for cid, conf in (config.get("connectors") or {}).items():
        if component_type(cid) != "spanmetrics":
            continue
        conf = conf or {}
        ns = conf.get("namespace", "traces.span.metrics")
        unit = (conf.get("histogram") or {}).get("unit", "ms")
        calls = prometheus_name(f"{ns}.calls", "", counter=True, gauge=False)
        duration = prometheus_name(f"{ns}.duration", unit, counter=False, gauge=False)
        out |= {calls + "_total", duration + "_bucket", duration + "_sum", duration + "_count"}
    return out


#: servicegraph connector output (names fixed by the connector, already Prometheus-style).
SERVICEGRAPH_NAMES = {
    "traces_service_graph_request_total",
    "traces_service_graph_request_failed_total",
    "traces_service_graph_unpaired_spans_total",
    "traces_service_graph_dropped_spans_total",
    *(
        f"traces_service_graph_request_{side}_seconds_{suffix}"
        for side in ("server", "client")
        for suffix in ("bucket", "sum", "count")
    ),
}


def recording_rule_names() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


@pytest.fixture(scope="module")
def known_metrics(voxline_metrics: dict[str, Any]) -> set[str]:
    known = set(voxline_metrics) | {"target_info", "up"} | SERVICEGRAPH_NAMES
    for path in COLLECTOR_CONFIGS:
        known |= spanmetrics_names(load(path))
    return known | recording_rule_names()


def known_labels() -> set[str]:
    """Label names a Voxline series can carry in Prometheus."""
    attribute_keys = [getattr(names, n) for n in dir(names) if n.startswith(("ATTR_", "RESOURCE_"))]
    labels = {_label_name(k) for k in attribute_keys if isinstance(k, str)}
    labels |= {"__name__", "le", "job", "instance", "namespace", "pod", "service"}
    # spanmetrics (defaults + configured dimensions) and servicegraph
    labels |= {"service_name", "span_name", "span_kind", "status_code"}
    labels |= {"client", "server", "connection_type", "failed"}
    for path in COLLECTOR_CONFIGS:
        config = load(path)
        for cid, conf in (config.get("connectors") or {}).items():
            conf = conf or {}
            if component_type(cid) == "spanmetrics":
                labels |= {_label_name(d["name"]) for d in conf.get("dimensions", [])}
            if component_type(cid) == "servicegraph":
                for d in conf.get("dimensions", []):
                    labels |= {f"client_{_label_name(d)}", f"server_{_label_name(d)}"}
    return labels


# ---------------------------------------------------------------------------------------------
# PromQL scanning (enough of the grammar to find metric and label names)
# ---------------------------------------------------------------------------------------------

_PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
_GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


def _strip_strings(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return re.sub(r"'(?:[^'\\]|\\.)*'", "''", expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions/keywords excluded)."""
    s = expr.replace("$$", "$")
    s = _strip_strings(s)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges, subqueries
    s = re.sub(_GROUPING, r" \1 ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables
    s = re.sub(r"(?<![\w:.])\d+(\.\d+)?([eE][-+]?\d+)?", " ", s)  # numbers
    found = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        token = m.group(0)
        rest = s[m.end() :].lstrip()
        if token.lower() in _PROMQL_KEYWORDS:
            continue
        if rest.startswith("(") or re.match(r"(by|without)\b", rest):
            continue  # function or aggregation
        found.add(token)
    return found


def promql_label_names(expr: str) -> set[str]:
    """Label names in matchers and in by/without/on/ignoring/group_* clauses."""
    s = _strip_strings(expr.replace("$$", "$"))
    out: set[str] = set()
    for block in re.findall(r"\{([^}]*)\}", s):
        out |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", block))
    for _kw, inner in re.findall(_GROUPING, s):
        out |= {x.strip() for x in inner.split(",") if x.strip()}
    out.discard("__tags")  # Grafana's tracesToMetrics placeholder
    return out


def test_promql_scanner_finds_names() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, rpc_service) (rate(rpc_server_call_duration_"
        'seconds_bucket{rpc_service=~"a|b", rpc_method!="x"}[5m]))) / on (namespace) '
        "group_left sum without (pod) (voxline_stage_requests_total offset 5m) > bool 1e-3 "
        'and up or vector(1) unless pod:x:rate1m{namespace=~"$namespace"}[$__rate_interval]'
    )
    assert promql_metric_names(expr) == {
        "rpc_server_call_duration_seconds_bucket",
        "voxline_stage_requests_total",
        "up",
        "pod:x:rate1m",
    }
    assert promql_label_names(expr) == {"le", "rpc_service", "rpc_method", "namespace", "pod"}


# ---------------------------------------------------------------------------------------------
# Collector configs
# ---------------------------------------------------------------------------------------------

SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")


def pipelines(config: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    return config["service"]["pipelines"]


@pytest.fixture(params=COLLECTOR_CONFIGS, ids=lambda p: p.name)
def collector(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_every_component_is_defined_and_used(collector: dict[str, Any]) -> None:
    defined = {s: set(collector.get(s) or {}) for s in SECTIONS}
    connectors = defined["connectors"]
    used: dict[str, set[str]] = {s: set() for s in SECTIONS}
    used_as_exporter: set[str] = set()
    used_as_receiver: set[str] = set()
    for name, p in pipelines(collector).items():
        assert p.get("receivers"), f"pipeline {name} has no receivers"
        assert p.get("exporters"), f"pipeline {name} has no exporters"
        for cid in p.get("receivers", []):
            if cid in connectors:
                used_as_receiver.add(cid)
                used["connectors"].add(cid)
            else:
                assert cid in defined["receivers"], f"{name}: receiver {cid} not defined"
                used["receivers"].add(cid)
        for cid in p.get("processors", []):
            assert cid in defined["processors"], f"{name}: processor {cid} not defined"
            used["processors"].add(cid)
        for cid in p.get("exporters", []):
            if cid in connectors:
                used_as_exporter.add(cid)
                used["connectors"].add(cid)
            else:
                assert cid in defined["exporters"], f"{name}: exporter {cid} not defined"
                used["exporters"].add(cid)
    for ext in collector["service"].get("extensions", []):
        assert ext in defined["extensions"], f"extension {ext} not defined"
        used["extensions"].add(ext)
    for section in SECTIONS:
        unused = defined[section] - used[section]
        assert not unused, f"{section} defined but never used: {sorted(unused)}"
    # A connector must both leave one pipeline and enter another.
    assert connectors == used_as_exporter == used_as_receiver, (
        f"connectors must be exporter AND receiver: exported {sorted(used_as_exporter)}, "
        f"received {sorted(used_as_receiver)}, defined {sorted(connectors)}"
    )


def test_memory_limiter_first_and_batch_last(collector: dict[str, Any]) -> None:
    for name, p in pipelines(collector).items():
        procs = [component_type(c) for c in p.get("processors", [])]
        assert procs, f"pipeline {name} has no processors"
        assert procs[0] == FIRST_PROCESSOR, f"{name}: memory_limiter must be first: {procs}"
        assert procs[-1] == LAST_PROCESSOR, f"{name}: batch must be last: {procs}"
        assert procs.count(FIRST_PROCESSOR) == 1 and procs.count(LAST_PROCESSOR) == 1


def _upstream_pipelines(config: dict[str, Any], pipeline: str) -> set[str]:
    """Pipelines whose data reaches ``pipeline`` through connectors (transitively)."""
    ps = pipelines(config)
    connectors = set(config.get("connectors") or {})
    seen: set[str] = set()
    todo = [pipeline]
    while todo:
        current = todo.pop()
        for receiver in ps[current].get("receivers", []):
            if receiver not in connectors:
                continue
            for name, p in ps.items():
                if receiver in p.get("exporters", []) and name not in seen:
                    seen.add(name)
                    todo.append(name)
    return seen


def test_spanmetrics_sees_the_unsampled_stream(collector: dict[str, Any]) -> None:
    ps = pipelines(collector)

    def has(p: dict[str, list[str]], kind: str, section: str) -> bool:
        return any(component_type(c) == kind for c in p.get(section, []))

    feeding = [n for n, p in ps.items() if has(p, "spanmetrics", "exporters")]
    sampling = [n for n, p in ps.items() if has(p, "tail_sampling", "processors")]
    assert feeding, "no traces pipeline exports to the spanmetrics connector"
    assert sampling, "no pipeline does tail sampling"
    for name in feeding:
        chain = {name} | _upstream_pipelines(collector, name)
        sampled = [n for n in chain if has(ps[n], "tail_sampling", "processors")]
        assert not sampled, f"spanmetrics in {name} is fed after tail_sampling ({sampled})"
        assert not has(ps[name], "probabilistic_sampler", "processors")
    for name in sampling:
        upstream = _upstream_pipelines(collector, name)
        assert set(feeding) & upstream, (
            f"tail sampling in {name} must receive (via a connector) from the pipeline that "
            f"feeds spanmetrics {feeding}, so both see the same stream"
        )
    # the generated metrics reach Prometheus
    metrics_in = {c for p in ps.values() for c in p.get("receivers", [])}
    assert any(component_type(c) == "spanmetrics" for c in metrics_in)


def test_spanmetrics_settings(collector: dict[str, Any]) -> None:
    (conf,) = [
        c for cid, c in collector["connectors"].items() if component_type(cid) == "spanmetrics"
    ]
    assert conf["histogram"]["unit"] == "s"
    assert conf["exemplars"]["enabled"] is True
    dims = {d["name"] for d in conf["dimensions"]}
    assert {names.ATTR_STAGE, names.ATTR_RPC_METHOD} <= dims
    buckets = [_duration_s(b) for b in conf["histogram"]["explicit"]["buckets"]]
    assert buckets == pytest.approx(list(DURATION_BUCKETS_S)), (
        "spanmetrics buckets should equal telemetry.instruments.DURATION_BUCKETS_S"
    )


def _duration_s(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|µs|ms|s|m)", str(text))
    assert m, f"not a duration: {text}"
    scale = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]
    return float(m.group(1)) * scale


def test_tail_sampling_keeps_errors_slow_and_a_base(collector: dict[str, Any]) -> None:
    (conf,) = [
        c for cid, c in collector["processors"].items() if component_type(cid) == "tail_sampling"
    ]
    types = {p["type"]: p for p in conf["policies"]}
    assert {"status_code", "latency", "probabilistic"} <= set(types)
    assert "ERROR" in types["status_code"]["status_code"]["status_codes"]
    assert types["latency"]["latency"]["threshold_ms"] > 0
    assert 0 < types["probabilistic"]["probabilistic"]["sampling_percentage"] <= 100


def test_exporters_use_current_names_and_prometheus_settings(collector: dict[str, Any]) -> None:
    types = {component_type(e) for e in collector["exporters"]}
    # collector >= v0.144: otlp -> otlp_grpc, otlphttp -> otlp_http (old names deprecated)
    assert not types & {"otlp", "otlphttp"}, f"deprecated exporter names in use: {types}"
    assert "otlp_grpc" in types
    (prom,) = [
        c for cid, c in collector["exporters"].items() if component_type(cid) == "prometheus"
    ]
    assert prom["enable_open_metrics"] is True, "exemplars need OpenMetrics"
    assert prom["resource_to_telemetry_conversion"]["enabled"] is True


def test_namespace_and_pod_labels_only_on_metrics(collector: dict[str, Any]) -> None:
    ps = pipelines(collector)
    label_procs = {
        cid
        for cid, conf in collector["processors"].items()
        if component_type(cid) == "resource"
        and {"namespace", "pod"} <= {a["key"] for a in (conf or {}).get("attributes", [])}
    }
    assert label_procs, "a resource processor must set the namespace/pod labels"
    for name, p in ps.items():
        in_pipeline = label_procs & set(p.get("processors", []))
        if name.split("/")[0] == "metrics":
            assert in_pipeline, f"{name} must set namespace/pod"
        else:
            assert not in_pipeline, f"{name}: namespace/pod are for Prometheus only"


def test_k8sattributes_only_in_production() -> None:
    prod = {component_type(c) for c in load(COLLECTOR_PROD)["processors"]}
    local = {component_type(c) for c in load(COLLECTOR_LOCAL)["processors"]}
    assert "k8sattributes" in prod
    assert "k8sattributes" not in local
    # Production and local pipelines have the same names and shape.
    assert set(pipelines(load(COLLECTOR_PROD))) == set(pipelines(load(COLLECTOR_LOCAL)))


def collector_ports(config: dict[str, Any]) -> dict[str, int]:
    def port(endpoint: str) -> int:
        return int(str(endpoint).rsplit(":", 1)[1])

    protocols = config["receivers"]["otlp"]["protocols"]
    (prom,) = [c for cid, c in config["exporters"].items() if component_type(cid) == "prometheus"]
    readers = config["service"]["telemetry"]["metrics"]["readers"]
    return {
        "otlp_grpc": port(protocols["grpc"]["endpoint"]),
        "otlp_http": port(protocols["http"]["endpoint"]),
        "prometheus": port(prom["endpoint"]),
        "self_metrics": int(readers[0]["pull"]["exporter"]["prometheus"]["port"]),
        "health": port(config["extensions"]["health_check"]["endpoint"]),
    }


def test_production_and_local_collectors_listen_on_the_same_ports() -> None:
    ports = collector_ports(load(COLLECTOR_PROD))
    assert ports == collector_ports(load(COLLECTOR_LOCAL))
    assert ports["otlp_grpc"] == 4317 and ports["otlp_http"] == 4318


# ---------------------------------------------------------------------------------------------
# docker compose
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


def _container_ports(service: dict[str, Any]) -> set[int]:
    out = set()
    for entry in service.get("ports", []):
        out.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    for entry in service.get("expose", []):
        out.add(int(str(entry).split("/")[0]))
    return out


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (bind mounts only, host path resolved)."""
    out = {}
    for v in service.get("volumes", []):
        host, container = str(v).split(":")[:2]
        if host.startswith((".", "/")):
            out[container] = str((COMPOSE_DIR / host).resolve())
    return out


def _image_tag(image: str) -> tuple[str, str]:
    repo, _, tag = image.rpartition(":")
    return repo, tag


def test_compose_voxline_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    collector_name = _service_with_image(compose, "opentelemetry-collector")
    grpc_port = collector_ports(load(COLLECTOR_LOCAL))["otlp_grpc"]
    for name in VOXLINE_SERVICES:
        svc = services[name]
        assert svc["build"] == {"context": "../..", "dockerfile": "deploy/docker/Dockerfile"}
        assert (COMPOSE_DIR / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
        assert svc["command"][:3] == ["python", "-m", f"services.{name}"]
        env = svc["environment"]
        assert env["VOXLINE_HOST"] == "0.0.0.0"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{collector_name}:{grpc_port}"
        assert "VOXLINE_PROMETHEUS_PORT" not in env, "metrics go through the collector only"
        port = DEFAULT_PORTS[name]
        assert port in _container_ports(svc)
        cmd = svc["command"]
        if "--port" in cmd:
            assert int(cmd[cmd.index("--port") + 1]) == port
    gw = services["gateway"]["environment"]
    for stage in ("frontend", "acoustic", "vocoder"):
        assert gw[f"VOXLINE_{stage.upper()}_ADDRESS"] == f"{stage}:{DEFAULT_PORTS[stage]}"


def _service_with_image(compose: dict[str, Any], fragment: str) -> str:
    matches = [
        n
        for n, s in compose["services"].items()
        if fragment in str(s.get("image", "")) and "entrypoint" not in s
    ]
    assert len(matches) == 1, f"one compose service should run {fragment}: {matches}"
    return matches[0]


def test_compose_observability_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    col = services[_service_with_image(compose, "opentelemetry-collector")]
    mounts = _mounts(col)
    config_arg = next(a for a in col["command"] if a.startswith("--config="))
    assert mounts[config_arg.split("=", 1)[1]] == str(COLLECTOR_LOCAL)
    cports = collector_ports(load(COLLECTOR_LOCAL))
    assert {cports["otlp_grpc"], cports["otlp_http"], cports["prometheus"]} <= _container_ports(col)

    # collector -> tempo
    tempo_name = _service_with_image(compose, "grafana/tempo")
    tempo = services[tempo_name]
    tempo_conf_path = next(a for a in tempo["command"] if a.startswith("-config.file="))
    assert _mounts(tempo)[tempo_conf_path.split("=", 1)[1]] == str(TEMPO_COMPOSE)
    tempo_conf = load(TEMPO_COMPOSE)
    tempo_otlp = tempo_conf["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    (exporter,) = [
        c for cid, c in load(COLLECTOR_LOCAL)["exporters"].items() if cid.startswith("otlp_grpc")
    ]
    assert exporter["endpoint"] == f"{tempo_name}:{tempo_otlp.rsplit(':', 1)[1]}"

    # prometheus: config + rules mounted, scrapes the collector's exporter
    prom_name = _service_with_image(compose, "prom/prometheus")
    prom = services[prom_name]
    pmounts = _mounts(prom)
    assert pmounts["/etc/prometheus/prometheus.yml"] == str(PROM_DIR / "prometheus.yml")
    assert pmounts["/etc/prometheus/rules"] == str(PROM_DIR / "rules")
    assert "--enable-feature=exemplar-storage" in prom["command"]
    targets = {
        t
        for job in load(PROM_DIR / "prometheus.yml")["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    }
    collector_name = _service_with_image(compose, "opentelemetry-collector")
    assert f"{collector_name}:{cports['prometheus']}" in targets
    assert f"{collector_name}:{cports['self_metrics']}" in targets
    collector_job = next(
        j
        for j in load(PROM_DIR / "prometheus.yml")["scrape_configs"]
        if f"{collector_name}:{cports['prometheus']}" in str(j)
    )
    assert collector_job.get("honor_labels") is True, "keep namespace/pod/job from the exporter"
    voxline_targets = {f"{s}:" for s in VOXLINE_SERVICES}
    assert not [t for t in targets if t.startswith(tuple(voxline_targets))], (
        "compose must not scrape the services directly (double counting)"
    )

    # grafana: provisioning + dashboards mounted; datasource URLs are compose services
    graf = services[_service_with_image(compose, "grafana/grafana")]
    gmounts = _mounts(graf)
    assert gmounts["/etc/grafana/provisioning"] == str(GRAFANA_DIR / "provisioning")
    (provider,) = load(DASHBOARD_PROVIDERS)["providers"]
    assert gmounts[provider["options"]["path"]] == str(GRAFANA_DIR / "dashboards")
    urls = {d["type"]: d["url"] for d in load(DATASOURCES)["datasources"]}
    assert urls["prometheus"] == f"http://{prom_name}:9090"
    assert urls["tempo"] == f"http://{tempo_name}:{tempo_conf['server']['http_listen_port']}"

    # every bind mount exists
    for name, svc in services.items():
        for container, host in _mounts(svc).items():
            assert Path(host).exists(), f"{name}: {host} (-> {container}) does not exist"


def test_compose_images_are_pinned_like_k8s(compose: dict[str, Any]) -> None:
    k8s_images = {}
    for doc in k8s_documents():
        for image in _images(doc):
            repo, tag = _image_tag(image)
            k8s_images.setdefault(repo, set()).add(tag)
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        repo, tag = _image_tag(image)
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        if repo in k8s_images:
            assert {tag} == k8s_images[repo], f"{name}: {image} vs k8s/ {k8s_images[repo]}"


# ---------------------------------------------------------------------------------------------
# k8s/: any OpenTelemetry Collector Service must match collector-config/otelcol.yaml
# ---------------------------------------------------------------------------------------------


def k8s_documents() -> Iterator[dict[str, Any]]:
    if not K8S_DIR.is_dir():
        return
    for path in sorted(K8S_DIR.rglob("*.y*ml")):
        if path.suffix not in (".yaml", ".yml"):
            continue
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue  # not ours to lint (kubernetes tests do); nothing to match here
        for doc in docs:
            if isinstance(doc, dict) and "kind" in doc:
                yield doc


def _images(doc: dict[str, Any]) -> list[str]:
    spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
    return [c.get("image", "") for c in spec.get("containers", []) if c.get("image")]


def _collector_workloads() -> list[dict[str, Any]]:
    return [
        d
        for d in k8s_documents()
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
        and any("opentelemetry-collector" in i for i in _images(d))
    ]


def _selects(service: dict[str, Any], workload: dict[str, Any]) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_k8s_collector_services_match_the_collector_config() -> None:
    workloads = _collector_workloads()
    services = [
        (s, w)
        for s in k8s_documents()
        if s["kind"] == "Service"
        for w in workloads
        if _selects(s, w)
    ]
    if not services:
        # Vacuous only while k8s/ has no collector Service; the k8s manifests add one.
        assert not workloads, "a collector workload under k8s/ but no Service selects it"
        return
    expected = collector_ports(load(COLLECTOR_PROD))
    for service, workload in services:
        containers = workload["spec"]["template"]["spec"]["containers"]
        named = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}
        numbers = set(named.values())
        target_ports = set()
        for p in service["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            if isinstance(target, str):
                assert target in named, f"Service targetPort {target!r} not a container port"
                target = named[target]
            assert target in numbers, f"targetPort {target} not exposed by the collector pod"
            target_ports.add(target)
        assert expected["otlp_grpc"] in target_ports, "the Service must expose OTLP/gRPC"
        assert target_ports <= set(expected.values()), (
            f"Service ports {sorted(target_ports)} vs collector config {expected}"
        )
        # Services that send OTLP to it use its name and the gRPC port.
        name = service["metadata"]["name"]
        for doc in k8s_documents():
            for env in _env_vars(doc):
                if env.get("name") == "OTEL_EXPORTER_OTLP_ENDPOINT" and name in str(
                    env.get("value", "")
                ):
                    assert str(env["value"]).rstrip("/").endswith(f":{expected['otlp_grpc']}")


def _env_vars(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
    return [e for c in spec.get("containers", []) for e in c.get("env", [])]


# ---------------------------------------------------------------------------------------------
# Prometheus: promtool + names
# ---------------------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(PROMTOOL_HINT)
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, cwd=PROM_DIR
    )


@pytest.mark.parametrize("config", PROM_CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(config: Path) -> None:
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_k8s_config() -> None:
    result = promtool("check", "config", str(PROM_K8S))
    output = result.stdout + result.stderr
    if result.returncode != 0:
        # Debian's build has no Kubernetes service discovery; anything else is a real error.
        assert "field kubernetes_sd_configs not found" in output, output
    config = load(PROM_K8S)
    assert config["rule_files"] == ["rules/*.yml"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    collector = jobs["otel-collector"]
    assert collector["honor_labels"] is True
    port = collector_ports(load(COLLECTOR_PROD))["prometheus"]
    assert any(f":{port}" in str(r.get("regex", "")) for r in collector["relabel_configs"])
    pods = jobs["voxline-pods"]
    targets = {r.get("target_label"): r.get("source_labels") for r in pods["relabel_configs"]}
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]
    assert targets["pod"] == ["__meta_kubernetes_pod_name"]


def test_promtool_check_rules() -> None:
    assert RULE_FILES, "no rule files"
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    assert RULE_TESTS, "no rule unit tests"
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_is_unit_tested() -> None:
    exprs: list[str] = []
    alert_cases: dict[str, list[bool]] = {}
    for path in RULE_TESTS:
        for case in load(path)["tests"]:
            exprs += [t["expr"] for t in case.get("promql_expr_test", [])]
            for t in case.get("alert_rule_test", []):
                alert_cases.setdefault(t["alertname"], []).append(bool(t.get("exp_alerts")))
    for record in recording_rule_names():
        assert any(record in promql_metric_names(e) for e in exprs), f"{record} untested"
    for rule in alert_rules():
        outcomes = alert_cases.get(rule["alert"], [])
        assert True in outcomes, f"{rule['alert']} never tested firing"
        assert False in outcomes, f"{rule['alert']} never tested not firing"


def test_alerts_have_summary_description_runbook() -> None:
    for rule in alert_rules():
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key), f"{rule['alert']}: missing {key}"
        assert rule.get("labels", {}).get("severity") in ("info", "warning", "critical")


def _rule_exprs() -> list[tuple[str, str]]:
    return [
        (rule.get("record") or rule.get("alert"), rule["expr"])
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
    ]


def test_rules_use_only_exported_metrics(known_metrics: set[str]) -> None:
    for name, expr in _rule_exprs():
        unknown = promql_metric_names(expr) - known_metrics
        assert not unknown, f"{name}: unknown metrics {sorted(unknown)}"


def test_rules_use_only_known_labels() -> None:
    labels = known_labels()
    for name, expr in _rule_exprs():
        unknown = promql_label_names(expr) - labels
        assert not unknown, f"{name}: unknown labels {sorted(unknown)}"


def test_autoscaling_rule_keeps_namespace_and_pod() -> None:
    (expr,) = [e for n, e in _rule_exprs() if n == "pod:voxline_stage_queue_compute_ratio:rate1m"]
    for clause in re.findall(r"by \(([^)]*)\)", expr):
        assert {"namespace", "pod"} <= {x.strip() for x in clause.split(",")}


def test_local_targets_carry_namespace_and_pod() -> None:
    files = sorted((PROM_DIR / "targets").glob("*.json"))
    assert files
    ports = set()
    for path in files:
        for group in json.loads(path.read_text()):
            assert {"namespace", "pod"} <= set(group["labels"]), path
            ports |= {t.rsplit(":", 1)[1] for t in group["targets"]}
    assert len(ports) == len(VOXLINE_SERVICES)


# ---------------------------------------------------------------------------------------------
# Grafana
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in load(DATASOURCES)["datasources"]}


def test_datasource_links(datasources: dict[str, dict[str, Any]]) -> None:
    by_type = {d["type"]: d for d in datasources.values()}
    prom, tempo = by_type["prometheus"], by_type["tempo"]
    dest = prom["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": tempo["uid"]} in dest
    assert tempo["jsonData"]["tracesToMetrics"]["datasourceUid"] == prom["uid"]
    assert tempo["jsonData"]["serviceMap"]["datasourceUid"] == prom["uid"]


def test_datasource_queries_use_exported_metrics(
    datasources: dict[str, dict[str, Any]], known_metrics: set[str]
) -> None:
    queries = [
        q["query"]
        for d in datasources.values()
        for q in d.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", [])
    ]
    assert queries
    for q in queries:
        assert "$__tags" not in q.replace("$$", ""), "escape $ as $$ in provisioning files"
        assert promql_metric_names(q) <= known_metrics, q
        assert promql_label_names(q) <= known_labels(), q


def _dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in _dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((panel["title"], target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", text)
        if m:
            out.append((f"variable {var['name']}", m.group(1)))
        elif var.get("type") == "query":
            out.append((f"variable {var['name']}", text))
    return out


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name, scope="module")
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return json.loads(request.param.read_text())


def test_dashboard_queries_use_exported_metrics(
    dashboard: dict[str, Any], known_metrics: set[str]
) -> None:
    queries = _dashboard_queries(dashboard)
    assert queries
    for title, expr in queries:
        found = promql_metric_names(expr)
        assert found, f"{title}: no metric in {expr!r}"
        unknown = found - known_metrics
        assert not unknown, f"{title}: unknown metrics {sorted(unknown)} in {expr!r}"
        bad_labels = promql_label_names(expr) - known_labels()
        assert not bad_labels, f"{title}: unknown labels {sorted(bad_labels)}"


def test_dashboard_datasources_exist(
    dashboard: dict[str, Any], datasources: dict[str, dict[str, Any]]
) -> None:
    for panel in _dashboard_panels(dashboard):
        for ds in [
            panel.get("datasource"),
            *[t.get("datasource") for t in panel.get("targets", [])],
        ]:
            if isinstance(ds, dict) and ds.get("uid") and not ds["uid"].startswith("-- "):
                assert ds["uid"] in datasources, f"{panel['title']}: datasource {ds}"


def test_dashboard_covers_the_issue(dashboard: dict[str, Any]) -> None:
    queries = " ".join(e for _, e in _dashboard_queries(dashboard))
    required = {
        "TTFA": "voxline_synthesis_time_to_first_audio_seconds",
        "RTF": "voxline_synthesis_real_time_factor",
        "throughput": "voxline_synthesis_duration_seconds_count",
        "errors": "error_ratio",
        "queue depth": "voxline_stage_active_requests",
        "batch size": "voxline_stage_batch_size",
        "GPU utilisation": "hw_gpu_utilization_ratio",
        "GPU memory": "hw_gpu_memory_usage_bytes",
        "GPU temperature": "hw_temperature_celsius",
        "GPU power": "hw_power_watts",
        "per-stage latency": "voxline_stage:rpc_server_call_duration_seconds:p95_5m",
    }
    for what, needle in required.items():
        assert needle in queries, f"dashboard lacks {what} ({needle})"
    stacked = [
        p
        for p in _dashboard_panels(dashboard)
        if p.get("fieldConfig", {})
        .get("defaults", {})
        .get("custom", {})
        .get("stacking", {})
        .get("mode")
        == "normal"
        and any("voxline_phase" in json.dumps(t) for t in p.get("targets", []))
    ]
    assert stacked, "no per-stage latency breakdown stacked by phase"
    gpu_panels = [p for p in _dashboard_panels(dashboard) if "hw_" in json.dumps(p.get("targets"))]
    assert all("pod" in json.dumps(p["targets"]) for p in gpu_panels), "GPU panels per pod"
    exemplars = [t for p in _dashboard_panels(dashboard) for t in p.get("targets", [])]
    assert any(t.get("exemplar") for t in exemplars), "no panel shows exemplars"
