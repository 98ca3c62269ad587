"""The autoscaling queries, run for real: prometheus-adapter's rules (expanded as the adapter
expands them) and KEDA's Prometheus triggers, against a real Prometheus scraping two real
vocoder processes that stand for two pods.

Each vocoder runs with its own `k8s.pod.name` (OTEL_RESOURCE_ATTRIBUTES, as the Deployment sets
it from the downward API) and its own Prometheus endpoint (--prometheus-port). Prometheus
attaches `namespace`/`pod` target labels equal to those resource attributes — the repository's
label convention (deploy/prometheus/README.md), which in Kubernetes the collector's
resource/promlabels (or the pod scrape relabelling) produces. One pod gets four concurrent
callers (requests queue for its model), the other one caller at a time.

The machine has no GPU, so each process gets a stand-in `pynvml` module (first on its
PYTHONPATH) reporting a fixed utilisation: the GPU rule then runs over series produced by
Voxline's real NVML instrument code and Prometheus endpoint.

Needs the `prometheus` binary (apt-get install -y --no-install-recommends prometheus); fails,
never skips, without it.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from prometheus_harness import PrometheusError, PrometheusServer, TargetGroup, prometheus_binary
from test_k8s_manifests import adapter_rules, expand, kv, series_name
from voxline.v1 import vocoder_pb2, vocoder_pb2_grpc

from services.cli.stack import free_port, wait_serving
from services.runtime.tensors import to_proto

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "voxline"
# Real-looking pod names: the KEDA queries select a Deployment's pods by `<name>-<hash>-<id>`.
BUSY = "vocoder-6f9c7d8b5-x2k4q"
IDLE = "vocoder-6f9c7d8b5-p7m3z"
GPU_UTIL = {BUSY: 81, IDLE: 37}  # percent, as NVML reports it
LOAD_SECONDS = 6.0


class Vocoder:
    """One `python -m services.vocoder` process standing for one pod."""

    def __init__(self, pod: str, fake_dir: Path, log_dir: Path) -> None:
        self.pod = pod
        self.port = free_port()
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "OTEL_RESOURCE_ATTRIBUTES": f"k8s.pod.name={pod},k8s.namespace.name={NAMESPACE}",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "prometheus",  # pull only, as with direct scraping
            "PYTHONPATH": os.pathsep.join([str(fake_dir), os.environ.get("PYTHONPATH", "")]),
            "FAKE_NVML_UUID": f"GPU-{pod}",
            "FAKE_NVML_GPU_UTIL": str(GPU_UTIL[pod]),
            "PYTHONUNBUFFERED": "1",
        }
        self.log = open(log_dir / f"{pod}.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.vocoder",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--prometheus-port={self.metrics_port}",
                "--torch-threads=1",
                "--drain-seconds=1",
                "--max-queue=32",
                # One request per model execution: the contention test below needs callers
                # that queue for the model rather than share its batches.
                "--max-batch-size=1",
            ],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _load(address: str, callers: int, seconds: float, stop: threading.Event) -> list[BaseException]:
    """`callers` threads calling Vocode back to back for `seconds`."""
    mel = to_proto(torch.full((80, 48), -4.0))
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds

    def caller() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = vocoder_pb2_grpc.VocoderStub(channel)
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    stub.Vocode(vocoder_pb2.VocodeRequest(mel=mel), timeout=60)
                except grpc.RpcError as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 90)
    return errors


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Vocoder]]:
    try:
        prometheus_binary()
    except PrometheusError as exc:  # CI installs it: fail, never skip
        pytest.fail(str(exc))
    base = tmp_path_factory.mktemp("k8s-adapter")
    fake = Path(__file__).parent / "fakes"  # its pynvml.py reads FAKE_NVML_* from the env
    started = {pod: Vocoder(pod, fake, base) for pod in (BUSY, IDLE)}
    try:
        for v in started.values():
            wait_serving(v.address, 180, v.proc)
        yield started
    finally:
        for v in started.values():
            v.stop()


@pytest.fixture(scope="module")
def prom(
    pods: dict[str, Vocoder], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PrometheusServer, float, float]]:
    """Prometheus scraping both pods after the load: (server, evaluation time, max active
    requests seen on the busy pod through the adapter's active-requests query during load)."""
    targets = {
        "voxline": [
            TargetGroup(
                [f"127.0.0.1:{pods[pod].metrics_port}"], {"namespace": NAMESPACE, "pod": pod}
            )
            for pod in (BUSY, IDLE)
        ]
    }
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), targets) as server:
        server.wait_for('up{job="voxline"} == 1', lambda rows: len(rows) == 2, timeout=60)
        active_rule = _rule("voxline_active_requests")
        active_query = expand(
            active_rule["metricsQuery"], series_name(active_rule["seriesQuery"]), _matchers()
        )
        stop = threading.Event()
        results: dict[str, list[BaseException]] = {}
        workers = [
            threading.Thread(
                target=lambda pod=pod, n=n: results.__setitem__(
                    pod, _load(pods[pod].address, n, LOAD_SECONDS, stop)
                ),
                daemon=True,
            )
            for pod, n in ((BUSY, 4), (IDLE, 1))
        ]
        for w in workers:
            w.start()
        busiest = 0.0
        while any(w.is_alive() for w in workers):
            for row in server.query(active_query):
                if row["metric"].get("pod") == BUSY:
                    busiest = max(busiest, float(row["value"]))
            time.sleep(0.5)
        for w in workers:
            w.join()
        assert results == {BUSY: [], IDLE: []}, results
        time.sleep(2.5)  # the last scrapes after the load
        yield server, time.time(), busiest


@functools.cache
def _rendered(overlay: str) -> list[dict[str, Any]]:
    return kv.documents(kv.render(overlay))


def _rules() -> list[dict[str, Any]]:
    return adapter_rules(_rendered("gpu"))


def _rule(name: str) -> dict[str, Any]:
    (rule,) = [r for r in _rules() if r["name"]["as"] == name]
    return rule


def _matchers(pods: tuple[str, ...] = (BUSY, IDLE)) -> str:
    """<<.LabelMatchers>> for a request about these pods in namespace voxline."""
    return f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"'


def _per_pod(server: PrometheusServer, rule: dict[str, Any], at: float) -> dict[str, float]:
    query = expand(rule["metricsQuery"], series_name(rule["seriesQuery"]), _matchers())
    rows = server.query(query, time_s=at)
    assert all(set(r["metric"]) == {"pod"} for r in rows), (query, rows)
    values = {r["metric"]["pod"]: r["value"] for r in rows}
    assert len(values) == len(rows), f"more than one value per pod: {rows}"
    return values


def test_every_adapter_rule_returns_one_value_per_pod(
    prom: tuple[PrometheusServer, float, float],
) -> None:
    server, at, _ = prom
    for rule in _rules():
        values = _per_pod(server, rule, at)
        assert set(values) == {BUSY, IDLE}, (rule["name"]["as"], values)
        assert all(isinstance(v, float) and math.isfinite(v) for v in values.values()), values
        # The adapter discovers the series with seriesQuery: both pods, namespace + pod labels.
        found = server.query(rule["seriesQuery"], time_s=at)
        assert {r["metric"]["pod"] for r in found} == {BUSY, IDLE}
        assert {r["metric"]["namespace"] for r in found} == {NAMESPACE}


def test_label_convention_pod_is_the_k8s_pod_name(
    prom: tuple[PrometheusServer, float, float],
) -> None:
    server, at, _ = prom
    rows = server.query('target_info{job="voxline"}', time_s=at)
    assert {(r["metric"]["pod"], r["metric"]["k8s_pod_name"]) for r in rows} == {
        (BUSY, BUSY),
        (IDLE, IDLE),
    }


def test_queue_compute_ratio_sees_the_contention(
    prom: tuple[PrometheusServer, float, float],
) -> None:
    server, at, _ = prom
    ratio = _per_pod(server, _rule("voxline_queue_compute_ratio"), at)
    # Four callers on one unbatched model wait ~3x as long as they compute; one never waits.
    assert ratio[BUSY] > 1.0, ratio
    assert ratio[IDLE] < 0.25, ratio


def test_active_requests_during_load(prom: tuple[PrometheusServer, float, float]) -> None:
    server, at, busiest = prom
    assert busiest >= 2, f"busy pod never showed concurrent requests ({busiest})"
    after = _per_pod(server, _rule("voxline_active_requests"), at)
    assert after == {BUSY: 0.0, IDLE: 0.0}, after


def test_gpu_utilization_per_pod(prom: tuple[PrometheusServer, float, float]) -> None:
    server, at, _ = prom
    util = _per_pod(server, _rule("voxline_gpu_utilization"), at)
    assert util == pytest.approx({pod: pct / 100 for pod, pct in GPU_UTIL.items()})


def test_the_hpa_would_scale_the_busy_deployment_up(
    prom: tuple[PrometheusServer, float, float],
) -> None:
    """The HPA algorithm on these values: desired = ceil(current * average / target) per
    metric, the largest wins, bounded by min/max replicas."""
    server, at, _ = prom
    docs = _rendered("gpu")
    (hpa,) = [
        d
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == "vocoder"
    ]
    by_name = {r["name"]["as"]: r for r in _rules()}
    current = 2
    desired = []
    for metric in hpa["spec"]["metrics"]:
        values = _per_pod(server, by_name[metric["pods"]["metric"]["name"]], at)
        average = sum(values.values()) / current
        target = _quantity(metric["pods"]["target"]["averageValue"])
        desired.append(math.ceil(current * average / target))
    replicas = min(max(max(desired), hpa["spec"]["minReplicas"]), hpa["spec"]["maxReplicas"])
    assert replicas > current, (desired, hpa["spec"]["metrics"])


def test_keda_queries_return_one_value_equal_to_the_per_pod_sum(
    prom: tuple[PrometheusServer, float, float],
) -> None:
    """KEDA needs one value per query; with AverageValue it is the sum over the pods of the
    same per-pod quantity the adapter serves."""
    server, at, _ = prom
    docs = _rendered("keda")
    (so,) = [d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "vocoder"]
    adapter_of = {
        "queue-compute-ratio": "voxline_queue_compute_ratio",
        "active-requests": "voxline_active_requests",
        "gpu-utilization": "voxline_gpu_utilization",
    }
    assert {t["name"] for t in so["spec"]["triggers"]} == set(adapter_of)
    for trigger in so["spec"]["triggers"]:
        rows = server.query(trigger["metadata"]["query"], time_s=at)
        assert len(rows) == 1, (trigger["name"], rows)
        per_pod = _per_pod(server, _rule(adapter_of[trigger["name"]]), at)
        assert rows[0]["value"] == pytest.approx(sum(per_pod.values())), trigger["name"]


def _quantity(q: str | int | float) -> float:
    """A Kubernetes quantity as a number ("700m" -> 0.7, "4" -> 4)."""
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)
