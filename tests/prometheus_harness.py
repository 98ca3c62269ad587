"""A real Prometheus server for tests: the ``prometheus`` binary on a free loopback port.

Example (two instances of a service with their own pod names, recording rules loaded)::

    from prometheus_harness import PrometheusServer, TargetGroup  # tests/ is on sys.path

    targets = {
        "voxline": [
            TargetGroup(["127.0.0.1:9464"], {"namespace": "test", "pod": "acoustic-0"}),
            TargetGroup(["127.0.0.1:9465"], {"namespace": "test", "pod": "acoustic-1"}),
        ],
    }
    with PrometheusServer(tmp_path, targets, rule_files=[RULES]) as prom:
        prom.wait_for('up{job="voxline"} == 1', lambda r: len(r) == 2)
        rows = prom.query('pod:voxline_stage_queue_compute_ratio:rate1m')
        # rows: [{"metric": {"pod": "acoustic-0", ...}, "value": 0.0}, ...]

``scrape_targets`` maps a job name to its targets: plain ``"host:port"`` strings (one group,
no extra labels) and/or :class:`TargetGroup` (targets + labels such as ``pod`` and
``namespace``, attached to every series scraped from them). It may also be the complete text
of a ``prometheus.yml`` (``rule_files`` given here are then appended; the text must not have
its own ``rule_files``). The generated config is JSON, which is valid YAML, so no YAML library
is needed.

The binary is ``$PROMETHEUS_BIN`` or ``prometheus`` on ``PATH``
(``apt-get install -y --no-install-recommends prometheus``: Debian's 2.42, with ``promtool``).
It runs with ``--web.enable-remote-write-receiver`` and ``--enable-feature=exemplar-storage``
and keeps its TSDB and log under ``tmp_path``. Stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

INSTALL_HINT = (
    "the Prometheus server binary is needed: apt-get install -y --no-install-recommends "
    "prometheus (Debian 2.42, includes promtool), or set PROMETHEUS_BIN"
)


class PrometheusError(RuntimeError):
    """Prometheus failed to start, or a query returned an error."""


@dataclass(frozen=True)
class TargetGroup:
    """Targets scraped with the same extra labels (e.g. ``{"pod": "acoustic-0"}``)."""

    targets: Sequence[str]
    labels: Mapping[str, str] = field(default_factory=dict)


Targets = Mapping[str, Sequence[str | TargetGroup]]


def prometheus_binary() -> str:
    """Path of the ``prometheus`` binary, or raise :class:`PrometheusError` with the hint."""
    path = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
    if not path:
        raise PrometheusError(INSTALL_HINT)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _static_configs(entries: Sequence[str | TargetGroup]) -> list[dict[str, Any]]:
    plain = [e for e in entries if isinstance(e, str)]
    groups = [e for e in entries if isinstance(e, TargetGroup)]
    out: list[dict[str, Any]] = []
    if plain:
        out.append({"targets": plain})
    for g in groups:
        if isinstance(g.targets, str):
            raise TypeError("TargetGroup.targets must be a list of 'host:port' strings")
        out.append({"targets": list(g.targets), "labels": dict(g.labels)})
    return out


def build_config(
    scrape_targets: Targets,
    rule_files: Iterable[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> dict[str, Any]:
    """The prometheus.yml (as a dict) that :class:`PrometheusServer` writes for a target map."""
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": _static_configs(entries)}
            for job, entries in scrape_targets.items()
        ],
    }


def _convert_value(value: Any) -> float | str:
    # The API returns numbers as strings ("1.5", "NaN", "+Inf").
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class PrometheusServer:
    """Context manager running a real Prometheus; see the module docstring."""

    def __init__(
        self,
        tmp_path: Path,
        scrape_targets: Targets | str,
        rule_files: Iterable[Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        *,
        start_timeout: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.dir = Path(tmp_path)
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        if isinstance(scrape_targets, str):
            text = scrape_targets
            if self.rule_files:
                files = json.dumps([str(p) for p in self.rule_files])
                text = text.rstrip("\n") + f"\nrule_files: {files}\n"
            self.config_text = text
        else:
            config = build_config(
                scrape_targets, self.rule_files, scrape_interval, evaluation_interval
            )
            self.config_text = json.dumps(config, indent=2) + "\n"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.dir / "prometheus.log"

    def start(self) -> PrometheusServer:
        binary = prometheus_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        last_error = ""
        for _attempt in range(3):  # a free port can be taken before Prometheus binds it
            self.port = _free_port()
            cmd = [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-remote-write-receiver",
                "--web.enable-lifecycle",
                "--enable-feature=exemplar-storage",
                "--log.level=info",
                *self.extra_args,
            ]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_ready()
                return self
            except PrometheusError as exc:
                last_error = str(exc)
                self.stop()
                if "address already in use" not in self.log_tail(20):
                    break
        raise PrometheusError(last_error)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with code {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"prometheus not ready after {self.start_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- HTTP API -------------------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; raise on an error status."""
        query = "?" + urllib.parse.urlencode(params) if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {exc.code}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params or {})}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, time_s: float | None = None) -> list[dict[str, Any]]:
        """Instant query. One dict per series: ``{"metric": {labels}, "value": float}``
        (a scalar result is one row with empty ``metric``). Raises on a PromQL error."""
        params = {"query": expr}
        if time_s is not None:
            params["time"] = repr(time_s)
        data = self.api("query", params)
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [
                {"metric": row["metric"], "value": _convert_value(row["value"][1])}
                for row in result
            ]
        if kind in ("scalar", "string"):
            return [{"metric": {}, "value": _convert_value(result[1])}]
        # matrix (a range selector): keep every sample
        return [
            {"metric": row["metric"], "values": [_convert_value(v) for _, v in row["values"]]}
            for row in result
        ]

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
        interval: float = 0.5,
    ) -> list[dict[str, Any]]:
        """Poll ``query(expr)`` until ``predicate(rows)`` holds; return those rows.

        Raises ``TimeoutError`` with the last result (and the targets' health) otherwise.
        """
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while True:
            rows = self.query(expr)
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{expr!r} did not satisfy the predicate within {timeout:.0f} s; "
                    f"last result: {rows}; targets: {self.targets()}"
                )
            time.sleep(interval)

    def targets(self) -> list[dict[str, Any]]:
        """Active targets: ``{"job", "url", "health", "labels", "last_error"}`` each."""
        data = self.api("targets", {"state": "active"})
        return [
            {
                "job": t["labels"].get("job", ""),
                "url": t.get("scrapeUrl", ""),
                "health": t.get("health", ""),
                "labels": t["labels"],
                "last_error": t.get("lastError", ""),
            }
            for t in data.get("activeTargets", [])
        ]

    def rule_health(self) -> list[dict[str, Any]]:
        """Every loaded rule: ``{"name", "health", "last_error"}`` (to spot broken rules)."""
        out = []
        for group in self.api("rules")["groups"]:
            for rule in group["rules"]:
                out.append(
                    {
                        "name": rule["name"],
                        "health": rule.get("health", ""),
                        "last_error": rule.get("lastError", ""),
                    }
                )
        return out


def finite(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose value is a finite number (drops NaN/Inf quantiles of empty histograms)."""
    return [r for r in rows if isinstance(r.get("value"), float) and math.isfinite(r["value"])]


# ---------------------------------------------------------------------------------------------
# What Voxline exposes to Prometheus, derived from the telemetry library itself
# ---------------------------------------------------------------------------------------------

#: Meter method -> how telemetry/prometheus.py renders the instrument.
_INSTRUMENT_KINDS = {
    "create_counter": "counter",
    "create_observable_counter": "counter",
    "create_up_down_counter": "updown",
    "create_observable_up_down_counter": "updown",
    "create_gauge": "gauge",
    "create_observable_gauge": "gauge",
    "create_histogram": "histogram",
}


@dataclass(frozen=True)
class Instrument:
    """One instrument as created through a meter: OTel name, unit and kind."""

    name: str
    unit: str
    kind: str  # counter | updown | gauge | histogram


def prometheus_series_names(name: str, unit: str, kind: str) -> set[str]:
    """The Prometheus metric names an instrument appears under, by the rules of
    ``telemetry.prometheus.render_text`` (the services' /metrics) — which are also the
    OTel->Prometheus rules the collector's prometheus exporter applies."""
    from telemetry.prometheus import prometheus_name

    base = prometheus_name(name, unit, counter=kind == "counter", gauge=kind == "gauge")
    if kind == "counter":
        return {base + "_total"}
    if kind == "histogram":
        return {base + "_bucket", base + "_sum", base + "_count"}
    return {base}


class _SpyMeter:
    """Wraps a real SDK meter and remembers every instrument created through it."""

    def __init__(self, meter: Any, seen: list[Instrument]) -> None:
        self._meter = meter
        self._seen = seen

    def __getattr__(self, attr: str) -> Any:
        real = getattr(self._meter, attr)
        kind = _INSTRUMENT_KINDS.get(attr)
        if kind is None:
            return real
        import inspect

        signature = inspect.signature(real)

        def create(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            unit = bound.arguments.get("unit", "") or ""
            self._seen.append(Instrument(bound.arguments["name"], unit, kind))
            return real(*args, **kwargs)

        return create


def voxline_instruments() -> list[Instrument]:
    """Every instrument Voxline's telemetry library creates, observed on the real code paths:
    ``init_telemetry`` (drop counter, GPU instruments — with a fake NVML so they register
    without a GPU), ``StageMetrics``, ``SynthesisMetrics``, the gRPC server interceptors and
    an instrumented channel. Process globals touched (OTel meter creation, the NVML state of
    ``telemetry.gpu``, the environment) are restored afterwards."""
    import sys
    from unittest import mock

    import grpc
    from fakes import pynvml as fake_nvml
    from opentelemetry.sdk.metrics import MeterProvider

    from telemetry import gpu, init_telemetry, names
    from telemetry.instruments import StageMetrics, SynthesisMetrics

    seen: list[Instrument] = []
    real_get_meter = MeterProvider.get_meter

    def spy_get_meter(provider: MeterProvider, *args: Any, **kwargs: Any) -> Any:
        return _SpyMeter(real_get_meter(provider, *args, **kwargs), seen)

    env = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    drop_env = ("OTEL_SDK_DISABLED", "VOXLINE_PROMETHEUS_PORT", "CUDA_VISIBLE_DEVICES")
    clean_env = {k: v for k, v in os.environ.items() if k not in drop_env}
    with (
        mock.patch.dict(os.environ, {**clean_env, **env}, clear=True),
        mock.patch.dict(sys.modules, {"pynvml": fake_nvml.load()}),
        mock.patch.object(MeterProvider, "get_meter", spy_get_meter),
    ):
        gpu._reset_for_tests()
        try:
            tel = init_telemetry("names-probe", service_version="0", set_global=False)
            try:
                for stage in sorted(names.STAGES):
                    StageMetrics(tel.meter, stage)
                SynthesisMetrics(tel.meter)
                tel.server_interceptors()
                with grpc.insecure_channel("127.0.0.1:9") as channel:
                    tel.instrument_channel(channel)
            finally:
                tel.shutdown(timeout_s=1)
        finally:
            gpu._reset_for_tests()
    unique = {(i.name, i.unit, i.kind): i for i in seen}
    return list(unique.values())


def voxline_metric_names() -> dict[str, Instrument]:
    """Prometheus metric name -> instrument, for everything Voxline can expose."""
    out: dict[str, Instrument] = {}
    for instrument in voxline_instruments():
        for series in prometheus_series_names(instrument.name, instrument.unit, instrument.kind):
            out[series] = instrument
    return out
