"""Real Prometheus (tests/prometheus_harness.py) scraping real Voxline /metrics endpoints and
evaluating deploy/prometheus/rules/*.yml.

1. In-process "pods" built from the telemetry library (the same /metrics code the services
   use, real gRPC calls through its interceptors), two of them for one stage: the recording
   rules' labels and values, and the derived metric-name list, checked quickly.
2. Every PromQL query of the Grafana dashboards and datasources parses in Prometheus.
3. The real local stack (four processes, ``--prometheus-port``) under real synthesis traffic:
   per-stage quantiles for frontend/acoustic/vocoder and a queue ratio per pod.

Needs the ``prometheus`` binary (apt-get install -y --no-install-recommends prometheus); it
fails, never skips, without it.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_harness import (
    PrometheusServer,
    TargetGroup,
    finite,
    voxline_metric_names,
)

from services.cli.client import synthesize
from services.cli.stack import SERVICES, LocalStack, free_port
from telemetry import StageMetrics, init_telemetry, names, phase_span

ROOT = Path(__file__).resolve().parents[1]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
MODEL_STAGES = ("frontend", "acoustic", "vocoder")

STAGE_P95 = "voxline_stage:rpc_server_call_duration_seconds:p95_5m"
PHASE_P95 = "voxline_stage_phase:voxline_stage_duration_seconds:p95_5m"
QUEUE_RATIO = "pod:voxline_stage_queue_compute_ratio:rate1m"
ERROR_RATIO = "voxline_stage:voxline_stage_requests:error_ratio_5m"
TTFA_P95 = "voxline_synthesis_method:voxline_synthesis_time_to_first_audio_seconds:p95_5m"
RTF_P50 = "voxline_synthesis_method:voxline_synthesis_real_time_factor:p50_5m"


def by_label(rows: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): r["value"] for r in finite(rows)}


def exported_names(prom: PrometheusServer, job: str) -> set[str]:
    rows = prom.query(f'count by (__name__) ({{job="{job}"}})')
    return {r["metric"]["__name__"] for r in rows}


def assert_rules_healthy(prom: PrometheusServer) -> None:
    broken = [r for r in prom.rule_health() if r["health"] not in ("ok", "unknown")]
    assert not broken, broken


# ---------------------------------------------------------------------------------------------
# 1. In-process pods
# ---------------------------------------------------------------------------------------------

# stage -> (gRPC service, method) as in the protos
STAGE_RPC = {
    "frontend": ("voxline.v1.TextFrontend", "Analyze"),
    "acoustic": ("voxline.v1.AcousticModel", "Generate"),
    "vocoder": ("voxline.v1.Vocoder", "Vocode"),
}


class FakePod:
    """One "pod" of a stage: its own Telemetry (its own /metrics port) and a gRPC server whose
    handler records queue + inference the way the stage runtime does."""

    def __init__(self, stage: str, pod: str, *, fail_every: int = 0) -> None:
        self.stage_name = stage
        self.pod = pod
        self.tel = init_telemetry(
            stage, service_version="test", set_global=False, prometheus_port=0, gpu_metrics=False
        )
        assert self.tel.prometheus_address is not None
        self.metrics_target = "{}:{}".format(*self.tel.prometheus_address)
        self.stage = StageMetrics(self.tel.meter, stage)
        self.fail_every = fail_every
        self.calls = 0
        service, method = STAGE_RPC[stage]
        self.path = f"/{service}/{method}"
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2),
            interceptors=self.tel.server_interceptors(),
        )
        handler = grpc.unary_unary_rpc_method_handler(self._handle)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service, {method: handler})]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.call = self.channel.unary_unary(self.path)

    def _handle(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        method = self.path.rsplit("/", 1)[1]
        self.calls += 1
        # Requests are counted by the server interceptor (telemetry/grpc.py), as in a service.
        with phase_span(self.tel.tracer, self.stage, names.PHASE_QUEUE, method=method):
            time.sleep(0.002)
        with phase_span(self.tel.tracer, self.stage, names.PHASE_INFERENCE, method=method):
            time.sleep(0.008)
        if self.fail_every and self.calls % self.fail_every == 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, "synthetic failure")
        return b"ok"

    def poke(self) -> None:
        try:
            self.call(b"x", timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)
        self.tel.shutdown(timeout_s=1)


@pytest.fixture
def fake_pods(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakePod]]:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    monkeypatch.delenv("VOXLINE_PROMETHEUS_PORT", raising=False)
    pods = [
        FakePod("frontend", "frontend-0"),
        FakePod("acoustic", "acoustic-0"),
        FakePod("acoustic", "acoustic-1", fail_every=4),
        FakePod("vocoder", "vocoder-0"),
    ]
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for p in pods:
                p.poke()
            stop.wait(0.05)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        yield pods
    finally:
        stop.set()
        thread.join(10)
        for p in pods:
            p.close()


def test_rules_over_the_telemetry_library_endpoints(
    tmp_path: Path, fake_pods: list[FakePod]
) -> None:
    targets = {
        "voxline": [
            TargetGroup([p.metrics_target], {"namespace": "it", "pod": p.pod}) for p in fake_pods
        ]
    }
    with PrometheusServer(tmp_path, targets, rule_files=RULES) as prom:
        prom.wait_for('up{job="voxline"} == 1', lambda r: len(r) == len(fake_pods), timeout=30)

        rows = prom.wait_for(
            STAGE_P95, lambda r: set(MODEL_STAGES) <= set(by_label(r, "voxline_stage")), 60
        )
        for row in finite(rows):
            assert row["metric"]["namespace"] == "it"
            assert 0.005 < row["value"] < 5, row  # a ~10 ms handler

        rows = prom.wait_for(
            QUEUE_RATIO, lambda r: {p.pod for p in fake_pods} <= set(by_label(r, "pod")), 60
        )
        for row in finite(rows):
            labels = row["metric"]
            assert {"namespace", "pod", "voxline_stage"} <= set(labels), labels
            assert labels["namespace"] == "it"
            # 2 ms queued per 8 ms inference (~0.25); sleeps overshoot under load: wide band
            assert 0.02 < row["value"] < 2.0, row
        stages_of = {r["metric"]["pod"]: r["metric"]["voxline_stage"] for r in finite(rows)}
        assert stages_of == {p.pod: p.stage_name for p in fake_pods}

        phases = prom.wait_for(
            PHASE_P95,
            lambda r: (
                {(m["metric"]["voxline_stage"], m["metric"]["voxline_phase"]) for m in finite(r)}
                >= {(s, ph) for s in MODEL_STAGES for ph in ("queue", "inference")}
            ),
            60,
        )
        assert all(r["metric"].get("namespace") == "it" for r in finite(phases))

        # Wait until the failing pod's errors are in the rate window too: right after its
        # error series appears, rate() has one sample of it and the ratio still reads 0.
        errors = prom.wait_for(
            ERROR_RATIO,
            lambda r: (
                set(MODEL_STAGES) <= set(by_label(r, "voxline_stage"))
                and by_label(r, "voxline_stage")["acoustic"] > 0
            ),
            60,
        )
        ratio = by_label(errors, "voxline_stage")
        assert ratio["frontend"] == 0 and ratio["vocoder"] == 0, ratio
        assert 0 < ratio["acoustic"] < 0.5, ratio  # one pod of two fails 1 call in 4

        # What the endpoints really expose is within the derived list the config tests use.
        derived = set(voxline_metric_names())
        scraped = exported_names(prom, "voxline") - {"up", "target_info"}
        scraped = {n for n in scraped if not n.startswith("scrape_")}
        assert scraped, "nothing scraped"
        assert scraped <= derived, sorted(scraped - derived)
        assert_rules_healthy(prom)


def test_harness_accepts_a_config_text_and_reports_errors(tmp_path: Path) -> None:
    text = (
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        "scrape_configs: []\n"
    )
    with PrometheusServer(tmp_path, text, rule_files=RULES) as prom:
        assert prom.url.startswith("http://127.0.0.1:")
        assert prom.query("1 + 1") == [{"metric": {}, "value": 2.0}]
        names_loaded = {r["name"] for r in prom.rule_health()}
        assert QUEUE_RATIO in names_loaded and "VoxlineTimeToFirstAudioHigh" in names_loaded
        with pytest.raises(RuntimeError, match="parse error"):
            prom.query("sum(")
        with pytest.raises(TimeoutError):
            prom.wait_for("vector(0) > 1", timeout=1, interval=0.2)
    assert prom.proc is None


# ---------------------------------------------------------------------------------------------
# 2. Grafana queries are valid PromQL
# ---------------------------------------------------------------------------------------------


def _grafana_queries() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        stack = list(dash.get("panels", []))
        while stack:
            panel = stack.pop()
            stack.extend(panel.get("panels", []))
            for t in panel.get("targets", []):
                if t.get("expr"):
                    out.append((f"{path.name}: {panel['title']}", t["expr"]))
        for var in dash.get("templating", {}).get("list", []):
            q = var.get("query")
            q = q.get("query", "") if isinstance(q, dict) else str(q or "")
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q)
            out.append((f"{path.name}: variable {var['name']}", m.group(1) if m else q))
    for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]:
        for q in ds.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", []):
            out.append((f"datasource {ds['name']}: {q['name']}", q["query"]))
    return out


def _substitute(expr: str) -> str:
    expr = expr.replace("$$", "$")
    expr = expr.replace("{$__tags}", '{service_name="gateway"}')
    expr = re.sub(r"\$__(rate_)?interval", "1m", expr)
    return re.sub(r"\$\{\w+\}|\$\w+", ".*", expr)


def test_grafana_queries_parse(tmp_path: Path) -> None:
    queries = _grafana_queries()
    assert queries
    with PrometheusServer(tmp_path, {}, rule_files=RULES) as prom:
        for where, expr in queries:
            try:
                prom.query(_substitute(expr))
            except RuntimeError as exc:
                pytest.fail(f"{where}: {exc}")


# ---------------------------------------------------------------------------------------------
# 3. The real local stack
# ---------------------------------------------------------------------------------------------

# Short: on a busy 2-core machine one synthesis can take tens of seconds.
TEXTS = ("Hello there.", "Streaming works.")


def _ready(prom: PrometheusServer) -> bool:
    stages = set(by_label(prom.query(STAGE_P95), "voxline_stage"))
    pods = set(by_label(prom.query(QUEUE_RATIO), "pod"))
    ttfa = set(by_label(finite(prom.query(TTFA_P95)), "voxline_synthesis_method"))
    return (
        set(MODEL_STAGES) <= stages
        and {f"{s}-0" for s in MODEL_STAGES} <= pods
        and "stream" in ttfa
    )


@pytest.mark.timeout(900)
def test_recording_rules_over_the_local_stack(tmp_path: Path) -> None:
    metrics_ports = {s: free_port() for s in SERVICES}
    extra = {s: ["--prometheus-port", str(metrics_ports[s])] for s in SERVICES}
    groups = [
        TargetGroup(
            [f"127.0.0.1:{metrics_ports[s]}"], {"namespace": "it", "pod": f"{s}-0", "service": s}
        )
        for s in SERVICES
    ]
    with (
        LocalStack(tmp_path / "stack", extra_args=extra) as stack,
        PrometheusServer(tmp_path / "prom", {"voxline": groups}, rule_files=RULES) as prom,
    ):
        prom.wait_for('up{job="voxline"} == 1', lambda r: len(r) == len(SERVICES), timeout=60)
        deadline = time.monotonic() + 300
        sent = 0
        # Counters appear with the first request, and rate() needs two scrapes that saw them
        # grow: keep sending (unary and streaming alternately) until the rules have values.
        while sent < 3 or not _ready(prom):
            stream = bool(sent % 2)
            result = synthesize(stack.gateway, TEXTS[sent % 2], stream=stream, timeout=120)
            assert result.pcm, "no audio"
            sent += 1
            if time.monotonic() > deadline:
                pytest.fail(
                    f"rules still empty after {sent} requests: {STAGE_P95}="
                    f"{prom.query(STAGE_P95)} {QUEUE_RATIO}={prom.query(QUEUE_RATIO)} "
                    f"targets={prom.targets()}"
                )
            time.sleep(1.0)

        p95 = by_label(prom.query(STAGE_P95), "voxline_stage")
        for stage in MODEL_STAGES:
            assert 0 < p95[stage] < 120, p95
        for q in ("p50_5m", "p99_5m"):
            rows = prom.query(STAGE_P95.replace("p95_5m", q))
            assert set(MODEL_STAGES) <= set(by_label(rows, "voxline_stage")), (q, rows)

        ratios = finite(prom.query(QUEUE_RATIO))
        by_pod = {r["metric"]["pod"]: r for r in ratios}
        for stage in MODEL_STAGES:
            row = by_pod[f"{stage}-0"]
            assert row["metric"]["namespace"] == "it"
            assert row["metric"]["voxline_stage"] == stage
            assert row["value"] >= 0 and math.isfinite(row["value"])

        phases = {
            (r["metric"]["voxline_stage"], r["metric"]["voxline_phase"])
            for r in finite(prom.query(PHASE_P95))
        }
        for stage in MODEL_STAGES:
            assert (stage, "inference") in phases, phases

        errors = by_label(prom.query(ERROR_RATIO), "voxline_stage")
        assert all(errors[s] == 0 for s in MODEL_STAGES), errors
        ttfa = by_label(prom.query(TTFA_P95), "voxline_synthesis_method")
        assert 0 < ttfa.get("stream", 0) < 120, ttfa
        rtf = by_label(prom.query(RTF_P50), "voxline_synthesis_method")
        assert rtf and all(v > 0 for v in rtf.values()), rtf

        # The dashboard's batch-size panel shows every model stage's batches (each model
        # execution now records its size).
        (batch_expr,) = [
            expr
            for where, expr in _grafana_queries()
            if "batch" in where.lower() and "voxline_stage_batch_size_sum" in expr
        ]
        batches = by_label(finite(prom.query(_substitute(batch_expr))), "voxline_stage")
        assert set(MODEL_STAGES) <= set(batches), batches
        assert all(batches[s] >= 1 for s in MODEL_STAGES), batches

        derived = set(voxline_metric_names())
        scraped = {
            n
            for n in exported_names(prom, "voxline")
            if n not in ("up", "target_info") and not n.startswith("scrape_")
        }
        assert scraped <= derived, sorted(scraped - derived)
        assert_rules_healthy(prom)
