"""The trace attribution tool (`voxline trace`): parsing every format, the analysis on traces
with known timings, the report, the CLI, and Tempo/Jaeger emulated over HTTP.

No services are started: everything runs on fixture files (tests/fixtures/traces, see its
README) and on synthetic Voxline-shaped traces written as OTLP/JSON lines.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import itertools
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from services.cli.trace import add_trace_commands, print_attribution
from telemetry import names
from traceattr import (
    NotATraceError,
    TraceFormatError,
    TraceNotFoundError,
    analyze,
    build_report,
    critical_path,
    detect_format,
    fetch_trace,
    load_file,
    load_run_dir,
    parse_document,
    parse_text,
    percentile,
    render_attribution,
    render_report,
    render_waterfall,
    search_traces,
    select_trace,
)
from traceattr.analysis import SpanTree
from traceattr.parse import normalize_id, parse_rfc3339_ns

FIXTURES = Path(__file__).parent / "fixtures" / "traces"
MS = 1_000_000
T0 = 1_700_000_000_000 * MS  # synthetic traces start here (ns)


# ---------------------------------------------------------------------------------------------
# Synthetic Voxline traces, written the way Voxline writes them (OTLP/JSON lines per service)
# ---------------------------------------------------------------------------------------------

KIND = {"internal": 1, "server": 2, "client": 3}


def _kv(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, value in attrs.items():
        if isinstance(value, bool):
            v: dict[str, Any] = {"boolValue": value}
        elif isinstance(value, int):
            v = {"intValue": str(value)}
        elif isinstance(value, float):
            v = {"doubleValue": value}
        else:
            v = {"stringValue": str(value)}
        out.append({"key": key, "value": v})
    return out


class TraceBuilder:
    """Builds one trace; times are milliseconds from :data:`T0`."""

    def __init__(self, number: int, offset_ms: float = 0.0) -> None:
        self.trace_id = f"{number:032x}"
        self.number = number
        self.offset_ms = offset_ms
        self.spans: dict[str, list[dict[str, Any]]] = {}
        self._next = 0

    def ns(self, t_ms: float) -> int:
        return T0 + round((self.offset_ms + t_ms) * MS)

    def span(
        self,
        service: str,
        name: str,
        kind: str,
        start: float,
        end: float,
        parent: str | None = None,
        attrs: dict[str, Any] | None = None,
        events: list[tuple[str, float]] | None = None,
    ) -> str:
        self._next += 1
        span_id = f"{self.number:08x}{self._next:08x}"
        span: dict[str, Any] = {
            "traceId": self.trace_id,
            "spanId": span_id,
            "name": name,
            "kind": KIND[kind],
            "startTimeUnixNano": str(self.ns(start)),
            "endTimeUnixNano": str(self.ns(end)),
            "attributes": _kv(attrs or {}),
            "status": {},
        }
        if parent:
            span["parentSpanId"] = parent
        if events:
            span["events"] = [
                {"timeUnixNano": str(self.ns(t)), "name": n, "attributes": []} for n, t in events
            ]
        self.spans.setdefault(service, []).append(span)
        return span_id

    def phase(self, stage: str, phase: str, start: float, end: float, parent: str) -> str:
        attrs = {names.ATTR_STAGE: stage, names.ATTR_PHASE: phase}
        return self.span(
            stage, names.phase_span_name(stage, phase), "internal", start, end, parent, attrs
        )

    def call(
        self,
        stage: str,
        rpc: str,
        start: float,
        end: float,
        s_start: float,
        s_end: float,
        parent: str,
    ) -> tuple[str, str]:
        """A gateway CLIENT span and the stage's SERVER span under it."""
        service = {"frontend": "TextFrontend", "acoustic": "AcousticModel", "vocoder": "Vocoder"}
        name = f"/voxline.v1.{service[stage]}/{rpc}"
        rpc_attrs = {"rpc.system": "grpc", "rpc.service": f"voxline.v1.{service[stage]}"}
        client = self.span("gateway", name, "client", start, end, parent, rpc_attrs)
        server = self.span(
            stage, name, "server", s_start, s_end, client, {**rpc_attrs, names.ATTR_STAGE: stage}
        )
        return client, server

    def requests(self) -> dict[str, dict[str, Any]]:
        """One ExportTraceServiceRequest per service."""
        return {
            service: {
                "resourceSpans": [
                    {
                        "resource": {"attributes": _kv({"service.name": service})},
                        "scopeSpans": [{"scope": {"name": "voxline"}, "spans": spans}],
                    }
                ]
            }
            for service, spans in self.spans.items()
        }


def write_run_dir(directory: Path, builders: list[TraceBuilder]) -> Path:
    """Append each builder's spans to ``<directory>/<service>.traces.jsonl``, one line each."""
    directory.mkdir(parents=True, exist_ok=True)
    for b in builders:
        for service, request in b.requests().items():
            with (directory / f"{service}.traces.jsonl").open("a") as fh:
                fh.write(json.dumps(request) + "\n")
    return directory


def unary_trace(
    number: int = 1,
    offset_ms: float = 0.0,
    frontend_inference: float = 9.0,
    acoustic_inference: float = 27.0,
    vocoder_inference: float = 25.0,
) -> TraceBuilder:
    """A sequential request. With the defaults (all in ms):

    Synthesize [0,100] > synthesis [1,99] > gateway.preprocess [1,3],
    Analyze client [4,20] > server [5,19] > queue [5,6] pre [6,8] inference [8,17] post [17,18],
    Generate client [22,60] > server [23,58] > queue [23,28] inference [28,55] post [55,57],
    Vocode client [62,94] > server [64,93] > queue [64,65] inference [65,90] post [90,92],
    gateway.postprocess [95,98]. Longer inference shifts everything after it.
    """
    b = TraceBuilder(number, offset_ms)
    f, a, v = frontend_inference - 9.0, acoustic_inference - 27.0, vocoder_inference - 25.0
    end = 100 + f + a + v
    root = b.span(
        "gateway",
        "/voxline.v1.Synthesizer/Synthesize",
        "server",
        0,
        end,
        None,
        {"rpc.system": "grpc"},
    )
    syn = b.span(
        "gateway",
        names.SPAN_SYNTHESIS,
        "internal",
        1,
        end - 1,
        root,
        {names.ATTR_SYNTHESIS_METHOD: "unary", names.ATTR_STAGE: "gateway"},
    )
    b.phase("gateway", "preprocess", 1, 3, syn)
    _, fs = b.call("frontend", "Analyze", 4, 20 + f, 5, 19 + f, syn)
    b.phase("frontend", "queue", 5, 6, fs)
    b.phase("frontend", "preprocess", 6, 8, fs)
    b.phase("frontend", "inference", 8, 17 + f, fs)
    b.phase("frontend", "postprocess", 17 + f, 18 + f, fs)
    o = f
    _, as_ = b.call("acoustic", "Generate", 22 + o, 60 + o + a, 23 + o, 58 + o + a, syn)
    b.phase("acoustic", "queue", 23 + o, 28 + o, as_)
    b.phase("acoustic", "inference", 28 + o, 55 + o + a, as_)
    b.phase("acoustic", "postprocess", 55 + o + a, 57 + o + a, as_)
    o = f + a
    _, vs = b.call("vocoder", "Vocode", 62 + o, 94 + o + v, 64 + o, 93 + o + v, syn)
    b.phase("vocoder", "queue", 64 + o, 65 + o, vs)
    b.phase("vocoder", "inference", 65 + o, 90 + o + v, vs)
    b.phase("vocoder", "postprocess", 90 + o + v, 92 + o + v, vs)
    b.phase("gateway", "postprocess", 95 + o + v, 98 + o + v, syn)
    return b


def streaming_trace(number: int = 2, offset_ms: float = 0.0) -> TraceBuilder:
    """A streamed request with overlapping acoustic and vocoder streams (ms):

    SynthesizeStream [0,200] > synthesis [1,199] (first_audio at 70 on both),
      gateway.preprocess [1,2], gateway.postprocess [69,70] and [190,195]
      Analyze client [2,20] > server [3,19] > inference [4,18]
      GenerateStream client [22,150] > server [24,148] > queue [24,26], inference [26,60],
          transfer [60,80], inference [80,110], transfer [110,115], inference [115,145]
      VocodeStream client [23,190] > server [25,188] > transfer [25,62] (waiting for mel),
          inference [62,68], transfer [68,112], inference [112,118], transfer [118,147],
          inference [147,180], postprocess [180,185]
    """
    b = TraceBuilder(number, offset_ms)
    fa = [(names.EVENT_FIRST_AUDIO, 70.0)]
    root = b.span(
        "gateway", "/voxline.v1.Synthesizer/SynthesizeStream", "server", 0, 200, None, {}, fa
    )
    syn = b.span(
        "gateway",
        names.SPAN_SYNTHESIS,
        "internal",
        1,
        199,
        root,
        {names.ATTR_SYNTHESIS_METHOD: "stream", names.ATTR_STAGE: "gateway"},
        fa,
    )
    b.phase("gateway", "preprocess", 1, 2, syn)
    _, fs = b.call("frontend", "Analyze", 2, 20, 3, 19, syn)
    b.phase("frontend", "inference", 4, 18, fs)
    _, as_ = b.call("acoustic", "GenerateStream", 22, 150, 24, 148, syn)
    _, vs = b.call("vocoder", "VocodeStream", 23, 190, 25, 188, syn)
    for phase, start, end in [
        ("queue", 24, 26),
        ("inference", 26, 60),
        ("transfer", 60, 80),
        ("inference", 80, 110),
        ("transfer", 110, 115),
        ("inference", 115, 145),
    ]:
        b.phase("acoustic", phase, start, end, as_)
    for phase, start, end in [
        ("transfer", 25, 62),
        ("inference", 62, 68),
        ("transfer", 68, 112),
        ("inference", 112, 118),
        ("transfer", 118, 147),
        ("inference", 147, 180),
        ("postprocess", 180, 185),
    ]:
        b.phase("vocoder", phase, start, end, vs)
    b.phase("gateway", "postprocess", 69, 70, syn)
    b.phase("gateway", "postprocess", 190, 195, syn)
    return b


def _ms_of(attr_stage: Any, field: str) -> float:
    return getattr(attr_stage, field) / MS


# ---------------------------------------------------------------------------------------------
# Every fixture parses
# ---------------------------------------------------------------------------------------------


def test_tempo_v1_hex_ids_fixture() -> None:
    ts = load_file(FIXTURES / "tempo-v1-tempopb-trace.json")
    assert ts.format == "tempo-v1"
    (trace,) = ts.traces
    assert trace.trace_id == "5b8efff798038103d269b633813fc60c"  # upper-case hex in the file
    (span,) = trace.spans
    assert span.span_id == "eee19b7ec3c1b174"
    assert span.parent_id == "eee19b7ec3c1b173"
    assert (span.kind, span.service, span.name) == ("server", "my.service", "I'm a server span")
    assert span.duration_ns == 1_000_000_000
    assert span.attributes == {"my.span.attr": "some value"}
    assert any("parent that is not in the trace" in w for w in trace.warnings)
    assert analyze(trace).e2e_ns == 1_000_000_000


def test_tempo_vulture_fixture_two_roots_and_events() -> None:
    ts = load_file(FIXTURES / "tempo-vulture-trace.json")
    assert ts.format == "otlp-json"
    (trace,) = ts.traces
    assert trace.trace_id == base64.b64decode("MUkZX/sL7AU0e0jv6OzBsA==").hex()
    assert len(trace.spans) == 6
    assert all(s.kind == "internal" for s in trace.spans)  # no kind in the file
    child = trace.span(base64.b64decode("PvWP1n88PEQ=").hex())
    assert child is not None
    assert child.parent_id == base64.b64decode("SyPeJdH7ZkE=").hex()
    assert child.name == "vulture-45" and child.duration_ns == 54_000
    assert [len(s.events) for s in trace.spans] == [4, 2, 3, 3, 4, 2]
    assert len(trace.roots()) == 2
    attr = analyze(trace)
    # Two roots: end-to-end is the extent of both, under a synthetic root.
    assert attr.root.virtual and attr.e2e_ns == 92_000
    # vulture-96 (89 us) outlives its parent vulture-45 (54 us): clipped, not beyond it.
    tree = attr.tree
    node96 = next(n for n in tree.nodes if n.span.name == "vulture-96")
    assert node96.clip_end - node96.clip_start == 54_000
    assert sum(seg.duration_ns for seg in attr.segments) == 92_000


def test_tempo_servicegraph_failed_requests_fixture() -> None:
    ts = load_file(FIXTURES / "tempo-servicegraphs-failed-requests.json")
    (trace,) = ts.traces
    assert len(trace.spans) == 15
    assert trace.trace_id == base64.b64decode("6Lbf+fjUSyjxsivDvS9naA==").hex()
    root = trace.span(base64.b64decode("kAf+pIRVStc=").hex())
    server = trace.span(base64.b64decode("KJg4Ps+hpCE=").hex())
    assert root is not None and server is not None
    assert (root.name, root.kind, root.status, root.parent_id) == (
        "requester",
        "client",
        "error",
        None,
    )
    assert (server.name, server.kind, server.service) == (
        "POST /:endpoint",
        "server",
        "mythical-server",
    )
    assert server.parent_id == root.span_id
    assert server.duration_ns == 1658325672506860544 - 1658325672499550976
    pg = next(s for s in trace.spans if s.name == "pg.query:INSERT")
    assert pg.status == "error" and "violates not-null constraint" in pg.status_message
    attr = analyze(trace)
    assert attr.e2e_ns == 15_317_504
    # The requester's client span has a server child: its self time is network to that service.
    assert attr.stage("mythical-server") is not None
    assert sum(s.blame_ns for s in attr.stages) + attr.blame.network_ns == attr.e2e_ns


def test_tempo_servicegraph_queue_database_fixture() -> None:
    (trace,) = load_file(FIXTURES / "tempo-servicegraphs-queue-database.json").traces
    assert len(trace.spans) == 19
    assert trace.services == ["mythical-requester", "mythical-server", "mythical-recorder"]
    consumer = next(s for s in trace.spans if s.kind == "consumer")
    producer = next(s for s in trace.spans if s.kind == "producer")
    assert consumer.parent_id == producer.span_id
    assert consumer.name == "messages process" and consumer.service == "mythical-recorder"
    attr = analyze(trace)
    assert attr.e2e_ns == 1658320854923357184 - 1658320854877522688
    assert attr.dominant() == "mythical-server"


def test_jaeger_ui_and_domain_fixtures_agree() -> None:
    ui = load_file(FIXTURES / "jaeger-ui_01.json")
    domain = load_file(FIXTURES / "jaeger-domain_01.json")
    assert (ui.format, domain.format) == ("jaeger-ui", "jaeger-model")
    (tu,), (td,) = ui.traces, domain.traces
    # 64-bit hex ids and base64 ids of the same trace normalise to the same 128-bit hex.
    assert tu.trace_id == td.trace_id == "00000000000000000000000000000001"
    assert [s.span_id for s in tu.spans] == [s.span_id for s in td.spans]
    assert [s.parent_id for s in tu.spans] == [
        None,
        None,
        "0000000000000002",
        "0000000000000002",  # CHILD_OF into *another* trace is skipped
        "0000000000000004",
    ]
    assert [s.parent_id for s in td.spans] == [s.parent_id for s in tu.spans]
    # UI times are microseconds; the internal model keeps RFC 3339 nanoseconds.
    assert tu.spans[0].start_ns == 1485467191639875000
    assert td.spans[0].start_ns == 1485467191639875139
    assert [s.duration_ns for s in tu.spans] == [5000, 5000, 5000, 5000, 4000]
    assert [s.duration_ns for s in td.spans] == [5000, 5000, 5000, 5000, 4000]
    for t in (tu, td):
        first, second = t.spans[0], t.spans[1]
        assert [e.name for e in first.events] == ["some-event", "log"]
        assert second.status == "error"
        assert second.attributes["javascript_limit"] == 9223372036854775222
        assert second.attributes["temperature"] == 72.5
        assert t.spans[2].service == "service-y"
        assert any("used by different spans" in w for w in t.warnings)
        assert analyze(t).e2e_ns == 5000


def test_jaeger_v3_trace_fixtures() -> None:
    for name in ("jaeger-v3-GetTrace.json", "jaeger-v3-FindTraces.json"):
        ts = load_file(FIXTURES / name)
        assert ts.format == "jaeger-v3"
        (trace,) = ts.traces
        (span,) = trace.spans
        assert trace.trace_id == "00000000000000000000000000000001"
        assert (span.span_id, span.name, span.kind, span.status) == (
            "0000000000000002",
            "foobar",
            "server",
            "error",
        )
        assert span.start_ns == 0 and span.service == ""
        assert any("no start time" in w for w in trace.warnings)
        assert analyze(trace).e2e_ns == 0


@pytest.mark.parametrize(
    ("name", "kind", "mentions"),
    [
        (
            "jaeger-v3-FindTraceSummaries.json",
            "jaeger-v3-summaries",
            "00000000000000000000000000000001",
        ),
        ("jaeger-v3-GetServices.json", "jaeger-services", "foo"),
        ("jaeger-v3-GetOperations.json", "jaeger-operations", "get_users"),
    ],
)
def test_non_trace_fixtures_are_reported_not_parsed(name: str, kind: str, mentions: str) -> None:
    with pytest.raises(NotATraceError) as info:
        load_file(FIXTURES / name)
    assert info.value.kind == kind
    assert "not a trace" in str(info.value) and mentions in str(info.value)
    if kind == "jaeger-v3-summaries":
        assert info.value.trace_ids == ["00000000000000000000000000000001"]


def test_otlp_and_jaeger_v1_fixtures_of_one_trace_agree() -> None:
    otlp = load_file(FIXTURES / "jaeger-otlp2jaeger-in.json")
    jaeger = load_file(FIXTURES / "jaeger-otlp2jaeger-out.json")
    assert (otlp.format, jaeger.format) == ("otlp-json", "jaeger-v1")
    for ts in (otlp, jaeger):
        (trace,) = ts.traces
        assert trace.trace_id == "83a9efd15c1c98a977e0711cc93ee28b"
        (span,) = trace.spans  # the file holds the span twice: an exact duplicate is dropped
        assert any("duplicate" in w for w in trace.warnings)
        assert (span.span_id, span.parent_id) == ("e127af99e3b3e074", "909541b92cf05311")
        assert (span.name, span.kind, span.service) == ("okey-dokey-0", "server", "telemetrygen")
        assert span.start_ns == 1706678909209712000 and span.duration_ns == 123_000
        assert span.attributes["peer.service"] == "telemetrygen-client"


def test_every_fixture_parses_renders_or_explains_itself() -> None:
    files = sorted(FIXTURES.glob("*.json"))
    assert len(files) == 13
    parsed = 0
    for path in files:
        try:
            ts = load_file(path)
        except NotATraceError:
            continue
        parsed += 1
        for trace in ts.traces:
            attr = analyze(trace)
            assert render_waterfall(attr, unicode=False)
            assert render_attribution(attr)
            json.dumps(attr.to_dict())
            # The critical path tiles the end-to-end interval exactly.
            assert sum(seg.duration_ns for seg in attr.segments) == attr.e2e_ns
    assert parsed == 10


def test_real_voxline_run_fixture() -> None:
    ts = load_run_dir(FIXTURES / "voxline-run")
    assert ts.format == "otlp-json-lines"
    assert len(ts.traces) == 2
    unary = analyze(select_trace(ts, "55b9780b"))
    stream = analyze(select_trace(ts, last=True))
    assert stream.trace.trace_id == "7356ae849e3741bcf6dcbbbfe4a6d677"
    assert (unary.method, stream.method) == ("unary", "stream")
    assert len(unary.trace.spans) == 40 and len(stream.trace.spans) == 112
    assert unary.e2e_ns == 5_179_356_857 and stream.e2e_ns == 39_346_542_381
    assert unary.ttfa_ns is None and stream.ttfa_ns == 4_016_977_426
    # This VM's CPU vocoder is the bottleneck of both requests.
    assert unary.dominant() == stream.dominant() == "vocoder"
    for attr in (unary, stream):
        total = sum(s.blame_ns for s in attr.stages) + attr.blame.network_ns
        assert total == attr.e2e_ns
        assert [s.stage for s in attr.stages] == ["gateway", "frontend", "acoustic", "vocoder"]
    # Unary is sequential: every downstream stage's critical path is its wall time.
    for name in ("frontend", "acoustic", "vocoder"):
        row = unary.stage(name)
        assert row is not None and row.critical_path_ns == row.wall_ns == row.blame_ns
    # Streaming: the vocoder waited for mel chunks; that wait is blamed on the acoustic stage.
    acoustic = stream.stage("acoustic")
    assert acoustic is not None and acoustic.blame_ns > acoustic.critical_path_ns
    assert stream.ttfa_blame is not None and stream.ttfa_blame.total_ns == stream.ttfa_ns


# ---------------------------------------------------------------------------------------------
# Format detection and liberal parsing
# ---------------------------------------------------------------------------------------------


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_detect_format() -> None:
    otlp = _fixture("tempo-servicegraphs-failed-requests.json")
    assert detect_format(otlp) == "otlp-json"
    assert detect_format({"batches": otlp["resourceSpans"]}) == "tempo-v1"
    assert detect_format({"trace": otlp}) == "tempo-v2"
    assert detect_format({"result": otlp}) == "jaeger-v3"
    assert detect_format(_fixture("jaeger-otlp2jaeger-out.json")) == "jaeger-v1"
    assert detect_format(_fixture("jaeger-ui_01.json")) == "jaeger-ui"
    assert detect_format(_fixture("jaeger-domain_01.json")) == "jaeger-model"
    assert detect_format({"traces": [{"traceID": "ab"}]}) == "tempo-search"
    assert detect_format({"data": ["gateway", "vocoder"], "total": 2}) == "jaeger-services"
    assert detect_format({"data": None, "errors": [{"code": 404, "msg": "x"}]}) == "jaeger-error"
    assert detect_format({"error": {"httpCode": 404, "message": "x"}}) == "jaeger-v3-error"
    assert detect_format({"resourceMetrics": []}) == "otlp-metrics"
    assert detect_format([otlp, otlp]) == "otlp-json-lines"
    assert detect_format({"hello": 1}) == "unknown"
    with pytest.raises(TraceFormatError, match="not a trace format"):
        parse_document({"hello": 1})
    with pytest.raises(TraceFormatError, match="not JSON"):
        parse_text("<html>502 Bad Gateway</html>")


def test_tempo_v1_v2_and_old_instrumentation_library_spans_parse_alike() -> None:
    otlp = _fixture("tempo-servicegraphs-failed-requests.json")
    reference = parse_document(otlp).traces[0]
    old = json.loads(json.dumps(otlp))
    for rs in old["resourceSpans"]:
        rs["instrumentationLibrarySpans"] = rs.pop("scopeSpans")
    variants = {
        "tempo-v1": {"batches": old["resourceSpans"]},
        "tempo-v2": {"trace": otlp},
    }
    for fmt, doc in variants.items():
        ts = parse_document(doc)
        assert ts.format == fmt
        (trace,) = ts.traces
        assert [
            (s.span_id, s.parent_id, s.name, s.kind, s.start_ns, s.end_ns) for s in trace.spans
        ] == [
            (s.span_id, s.parent_id, s.name, s.kind, s.start_ns, s.end_ns) for s in reference.spans
        ]


def test_liberal_parsing_of_ids_numbers_and_keys() -> None:
    doc = {
        "resource_spans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"string_value": "svc"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceID": "AAAAAAAAAAAAAAAAAAAAAQ==",
                                "span_id": "0a",
                                "name": "root",
                                "kind": "SPAN_KIND_SERVER",
                                "startTimeUnixNano": 1000,
                                "endTimeUnixNano": "3000",
                                "status": {"code": "STATUS_CODE_OK"},
                                "attributes": [{"key": "n", "value": {"intValue": 7}}],
                            },
                            {
                                "traceId": "1",
                                "spanId": "000000000000000b",
                                "parentSpanId": "AAAAAAAAAAo=",
                                "name": "child",
                                "kind": "3",
                                "start_time_unix_nano": "1500",
                                "end_time_unix_nano": 1200.0,  # ends before it starts
                            },
                        ]
                    }
                ],
            }
        ]
    }
    (trace,) = parse_document(doc).traces
    root, child = trace.spans
    assert trace.trace_id == "00000000000000000000000000000001"
    assert (root.span_id, root.kind, root.status, root.service) == (
        "000000000000000a",
        "server",
        "ok",
        "svc",
    )
    assert root.attributes == {"n": 7}
    assert (child.parent_id, child.kind, child.duration_ns) == ("000000000000000a", "client", 0)
    assert any("clamped" in w for w in trace.warnings)
    assert normalize_id("0000000000000000", 8) is None
    assert normalize_id(255, 8) == "00000000000000ff"
    assert parse_rfc3339_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_rfc3339_ns("1970-01-01T01:00:00+01:00") == 0


def test_json_lines_concatenated_json_and_torn_last_line(tmp_path: Path) -> None:
    requests = unary_trace().requests()
    lines = "".join(json.dumps(r) + "\n" for r in requests.values())
    ts = parse_text(lines)
    assert ts.format == "otlp-json-lines" and len(ts.traces[0].spans) == 20
    pretty = "\n".join(json.dumps(r, indent=2) for r in requests.values())  # streamed chunks
    assert len(parse_text(pretty).traces[0].spans) == 20
    torn = tmp_path / "x.traces.jsonl"
    torn.write_text(lines + lines[:50])
    assert len(load_file(torn).traces[0].spans) == 20
    as_json = tmp_path / "saved.json"
    as_json.write_text(lines + '{"resourceSp')
    assert len(load_file(as_json).traces[0].spans) == 20
    metrics = tmp_path / "gateway.metrics.jsonl"
    metrics.write_text('{"resourceMetrics": []}\n')
    with pytest.raises(NotATraceError, match="metrics"):
        load_file(metrics)


def test_select_trace(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run", [unary_trace(1), unary_trace(2, offset_ms=500)])
    ts = load_run_dir(run)
    assert select_trace(ts, "1").trace_id.endswith("01")
    assert select_trace(ts, "2").trace_id.endswith("02")  # leading zeros are optional
    assert select_trace(ts, f"{2:032X}").trace_id.endswith("02")  # any case
    assert select_trace(ts).trace_id.endswith("02")  # most recent
    with pytest.raises(TraceNotFoundError, match="not found"):
        select_trace(ts, "abcdef")
    # A directory of run directories means its newest run.
    nested = tmp_path / "runs"
    write_run_dir(nested / "20260101-000000", [unary_trace(1)])
    assert load_run_dir(nested).traces[0].trace_id.endswith("01")


# ---------------------------------------------------------------------------------------------
# Analysis on traces with known timings
# ---------------------------------------------------------------------------------------------


def _stage_ms(attr: Any, name: str) -> dict[str, float]:
    row = attr.stage(name)
    assert row is not None
    return {
        "calls": row.calls,
        "wall": row.wall_ns / MS,
        "busy": row.busy_ns / MS,
        "queue": row.phases["queue"] / MS,
        "pre": row.phases["preprocess"] / MS,
        "inference": row.phases["inference"] / MS,
        "post": row.phases["postprocess"] / MS,
        "transfer": row.phases["transfer"] / MS,
        "other": row.other_ns / MS,
        "network": row.network_ns / MS,
        "cp": row.critical_path_ns / MS,
        "cp_network": row.network_critical_path_ns / MS,
        "blame": row.blame_ns / MS,
        "waiting": row.waiting_ns / MS,
        "exclusive": row.exclusive_ns / MS,
    }


def test_unary_attribution_exact(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path, [unary_trace()])
    attr = analyze(select_trace(load_run_dir(run)))
    assert attr.voxline and attr.method == "unary"
    assert attr.e2e_ns == 100 * MS and attr.ttfa_ns is None
    assert [s.stage for s in attr.stages] == ["gateway", "frontend", "acoustic", "vocoder"]
    common = {"transfer": 0.0, "waiting": 0.0}
    assert _stage_ms(attr, "frontend") == {
        **common,
        "calls": 1, "wall": 14.0, "busy": 13.0, "queue": 1.0, "pre": 2.0, "inference": 9.0,
        "post": 1.0, "other": 1.0, "network": 2.0, "cp": 14.0, "cp_network": 2.0, "blame": 14.0,
        "exclusive": 13.0,
    }  # fmt: skip
    assert _stage_ms(attr, "acoustic") == {
        **common,
        "calls": 1, "wall": 35.0, "busy": 34.0, "queue": 5.0, "pre": 0.0, "inference": 27.0,
        "post": 2.0, "other": 1.0, "network": 3.0, "cp": 35.0, "cp_network": 3.0, "blame": 35.0,
        "exclusive": 34.0,
    }  # fmt: skip
    assert _stage_ms(attr, "vocoder") == {
        **common,
        "calls": 1, "wall": 29.0, "busy": 28.0, "queue": 1.0, "pre": 0.0, "inference": 25.0,
        "post": 2.0, "other": 1.0, "network": 3.0, "cp": 29.0, "cp_network": 3.0, "blame": 29.0,
        "exclusive": 28.0,
    }  # fmt: skip
    assert _stage_ms(attr, "gateway") == {
        **common,
        "calls": 1, "wall": 100.0, "busy": 5.0, "queue": 0.0, "pre": 2.0, "inference": 0.0,
        "post": 3.0, "other": 9.0, "network": 0.0, "cp": 14.0, "cp_network": 0.0, "blame": 14.0,
        "exclusive": 5.0,
    }  # fmt: skip
    # Sequential: e2e = stages + network + gateway's own time; 9 ms of it uninstrumented.
    assert attr.network_ns == attr.blame.network_ns == 8 * MS
    assert attr.unattributed_ns == 9 * MS
    assert (attr.overlap_ns, attr.idle_ns) == (0, 20 * MS)
    assert attr.dominant() == "acoustic"
    # Self times: duration minus the union of the children.
    by_kind = {(n.span.name, n.span.kind): n.self_ns / MS for n in attr.tree.nodes}
    assert by_kind[("/voxline.v1.TextFrontend/Analyze", "client")] == 2.0
    assert by_kind[("/voxline.v1.TextFrontend/Analyze", "server")] == 1.0
    assert by_kind[("/voxline.v1.AcousticModel/Generate", "client")] == 3.0
    assert by_kind[("/voxline.v1.Vocoder/Vocode", "client")] == 3.0
    assert by_kind[(names.SPAN_SYNTHESIS, "internal")] == 7.0
    assert by_kind[("/voxline.v1.Synthesizer/Synthesize", "server")] == 2.0
    # The critical path visits everything in order and tiles [0, 100] ms.
    chain = [
        (s.node.span.name, s.start_ns // MS - T0 // MS, s.end_ns // MS - T0 // MS)
        for s in attr.segments
    ]
    assert chain[0] == ("/voxline.v1.Synthesizer/Synthesize", 0, 1)
    assert chain[-1] == ("/voxline.v1.Synthesizer/Synthesize", 99, 100)
    assert ("acoustic.inference", 28, 55) in chain and ("vocoder.inference", 65, 90) in chain
    assert all(a[2] == b[1] for a, b in itertools.pairwise(chain))
    text = render_attribution(attr)
    assert "slowest: acoustic" in text and "unattributed: 9.00 ms (9.0%)" in text


def test_streaming_attribution_exact(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path, [streaming_trace()])
    attr = analyze(select_trace(load_run_dir(run)))
    assert attr.method == "stream"
    assert attr.e2e_ns == 200 * MS and attr.ttfa_ns == 70 * MS
    v = _stage_ms(attr, "vocoder")
    a = _stage_ms(attr, "acoustic")
    f = _stage_ms(attr, "frontend")
    g = _stage_ms(attr, "gateway")
    # Busy time: overlapping stages; the vocoder's stream is open 163 ms, busy 50 ms.
    assert (v["wall"], v["busy"], v["inference"], v["post"], v["transfer"], v["other"]) == (
        163.0, 50.0, 45.0, 5.0, 110.0, 3.0,
    )  # fmt: skip
    assert (a["wall"], a["busy"], a["queue"], a["inference"], a["transfer"], a["other"]) == (
        124.0, 96.0, 2.0, 94.0, 25.0, 3.0,
    )  # fmt: skip
    assert (f["wall"], f["busy"], f["network"], a["network"], v["network"]) == (
        16.0, 14.0, 2.0, 4.0, 4.0,
    )  # fmt: skip
    # The structural critical path runs through the vocoder's stream (it ends last) ...
    assert (g["cp"], f["cp"], a["cp"], v["cp"]) == (14.0, 16.0, 0.0, 163.0)
    assert (f["cp_network"], a["cp_network"], v["cp_network"]) == (2.0, 1.0, 4.0)
    # ... but 93 ms of it the vocoder was waiting while acoustic (92) or the gateway (1) worked.
    assert (g["blame"], f["blame"], a["blame"], v["blame"]) == (15.0, 16.0, 92.0, 70.0)
    assert v["waiting"] == 93.0
    assert attr.blame.network_ns == 7 * MS
    assert sum(s.blame_ns for s in attr.stages) + attr.blame.network_ns == attr.e2e_ns
    assert attr.unattributed_ns == 8 * MS
    assert attr.dominant() == "acoustic"
    # Concurrency split of [0, 200]: exclusive + overlap + idle = e2e.
    assert (g["exclusive"], f["exclusive"], a["exclusive"], v["exclusive"]) == (
        7.0, 14.0, 93.0, 47.0,
    )  # fmt: skip
    assert (attr.overlap_ns, attr.idle_ns) == (3 * MS, 36 * MS)
    # Time to first audio (70 ms): what the critical path up to the first_audio event holds.
    ttfa = attr.ttfa_blame
    assert ttfa is not None and ttfa.total_ns == 70 * MS
    assert {k: v / MS for k, v in ttfa.by_stage.items()} == {
        "gateway": 5.0,
        "frontend": 16.0,
        "acoustic": 35.0,
        "vocoder": 9.0,
    }
    assert ttfa.network_ns == 5 * MS
    d = attr.to_dict()
    assert d["ttfa_ms"] == 70.0 and d["dominant"] == "acoustic"
    assert d["blame"]["stages_ms"]["acoustic"] == 92.0
    text = render_attribution(attr)
    assert "time to first audio 70.00 ms" in text and "concurrency" in text


def test_request_root_with_a_skewed_caller_keeps_its_own_interval() -> None:
    """The gateway span's caller (a traced client on another host) may have a skewed clock:
    end-to-end is still the gateway's own interval, not the overlap with its parent."""
    b = unary_trace()
    caller = b.span("cli", "/voxline.v1.Synthesizer/Synthesize", "client", 5, 50)
    b.spans["gateway"][0]["parentSpanId"] = caller
    (trace,) = parse_document({"resourceSpans": [
        r for q in b.requests().values() for r in q["resourceSpans"]
    ]}).traces  # fmt: skip
    attr = analyze(trace)
    assert attr.method == "unary" and attr.e2e_ns == 100 * MS
    assert sum(s.duration_ns for s in attr.segments) == 100 * MS
    assert attr.stage("acoustic") is not None and attr.stage("acoustic").blame_ns == 35 * MS


def test_critical_path_prefers_the_stream_over_a_short_late_sibling() -> None:
    """A final flush that starts before a long stream ends must not push the stream off the
    path (the Jaeger UI variant would give the parent all of the stream's time)."""
    b = TraceBuilder(7)
    root = b.span("svc", "root", "server", 0, 100)
    b.span("svc", "stream", "client", 10, 90, root)
    b.span("svc", "flush", "internal", 89, 95, root)
    (trace,) = parse_document(b.requests()["svc"]).traces
    tree = SpanTree(trace)
    segs = [
        (s.node.span.name, (s.start_ns - T0) // MS, (s.end_ns - T0) // MS)
        for s in critical_path(tree.roots[0])
    ]
    assert segs == [
        ("root", 0, 10),
        ("stream", 10, 89),
        ("flush", 89, 95),
        ("root", 95, 100),
    ]


def test_parent_cycles_and_deep_traces_do_not_break_the_analysis() -> None:
    b = TraceBuilder(9)
    parent = None
    for i in range(3000):  # deeper than Python's recursion limit
        parent = b.span("svc", f"s{i}", "internal", i * 0.001, 10 - i * 0.001, parent)
    (trace,) = parse_document(b.requests()["svc"]).traces
    attr = analyze(trace)
    assert sum(s.duration_ns for s in attr.segments) == attr.e2e_ns == 10 * MS
    looped = parse_document(b.requests()["svc"]).traces[0]
    looped.spans[0].parent_id = looped.spans[-1].span_id  # root -> deepest -> ... -> root
    attr = analyze(looped)
    assert any("cycle" in w for w in attr.warnings)


# ---------------------------------------------------------------------------------------------
# Report over many traces
# ---------------------------------------------------------------------------------------------


def _report_run(directory: Path) -> Path:
    """20 requests: vocoder dominates most; the two slowest have a slow acoustic stage."""
    builders = []
    for i in range(20):
        acoustic = 150.0 if i in (4, 11) else 20.0 + i % 3
        builders.append(
            unary_trace(
                100 + i, offset_ms=1000 * i, acoustic_inference=acoustic, vocoder_inference=60.0
            )
        )
    return write_run_dir(directory, builders)


def test_report_finds_the_stage_that_dominates_the_tail(tmp_path: Path) -> None:
    report = build_report(load_run_dir(_report_run(tmp_path)).traces)
    assert report.count == 20 and report.voxline_only
    assert report.dominant_overall == {"vocoder": 18, "acoustic": 2}
    # Nearest-rank p95 of 20 requests is the 19th: both slow requests are in the tail.
    assert len(report.tail_trace_ids) == 2
    assert report.dominant_in_tail == {"acoustic": 2}
    assert report.tail_dominant == "acoustic"
    e2e = sorted(report.e2e_ms)
    assert report.tail_threshold_ms == e2e[18] == 258.0
    d = report.to_dict()
    assert d["e2e_ms"]["p50"] == e2e[9]
    acoustic = next(s for s in d["stages"] if s["stage"] == "acoustic")
    # Wall = inference (20..22, or 150) + queue 5 + postprocess 2 + handler 1 ms.
    assert acoustic["blame_ms"]["p50"] == 29.0
    assert acoustic["blame_ms"]["p95"] == 158.0
    assert acoustic["tail_mean_share_pct"] > 60
    assert "dominated by acoustic in 2" in render_report(report)
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([], 95) == 0.0


def test_report_skips_non_synthesis_traces(tmp_path: Path) -> None:
    other = TraceBuilder(55)
    other.span("gateway", "/voxline.v1.Synthesizer/ListVoices", "server", 0, 3)
    run = write_run_dir(tmp_path, [unary_trace(), other])
    report = build_report(load_run_dir(run).traces)
    assert report.count == 1
    assert report.skipped and "not a synthesis request" in report.skipped[0][1]


def _ended_with(b: TraceBuilder, code: int, name: str) -> TraceBuilder:
    """``b`` with its gateway server span ended with gRPC status ``code`` (ERROR, as
    Voxline marks every failed RPC)."""
    root = b.spans["gateway"][0]
    root["attributes"] += _kv({"rpc.grpc.status_code": code, "error.type": name})
    root["status"] = {"code": 2, "message": f"{name}: ..."}
    return b


def test_report_counts_refusals_and_failures_apart_from_latency(tmp_path: Path) -> None:
    ok = [unary_trace(100 + i, offset_ms=1000 * i, vocoder_inference=25.0 + i) for i in range(5)]
    # Much slower than every success: if they were measured, p95 and the tail would be theirs.
    refused = _ended_with(unary_trace(200, acoustic_inference=900.0), 8, "RESOURCE_EXHAUSTED")
    invalid = _ended_with(unary_trace(201, acoustic_inference=950.0), 3, "INVALID_ARGUMENT")
    failed = _ended_with(unary_trace(202, vocoder_inference=800.0), 4, "DEADLINE_EXCEEDED")
    run = write_run_dir(tmp_path / "run", [*ok, refused, invalid, failed])
    report = build_report(load_run_dir(run).traces)
    assert report.count == 5 and report.total == 8
    assert report.refused == {"RESOURCE_EXHAUSTED": 1, "INVALID_ARGUMENT": 1}
    assert report.failed == {"DEADLINE_EXCEEDED": 1}
    assert sorted(report.e2e_ms) == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert report.tail_trace_ids == [f"{104:032x}"]
    d = report.to_dict()
    assert d["requests"] == 8 and d["e2e_ms"]["p95"] == 104.0
    assert {u["status"] for u in d["unsuccessful"]} == {
        "RESOURCE_EXHAUSTED",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
    }
    text = render_report(report)
    assert text.splitlines()[0] == (
        "8 synthesis requests: 5 ok, 2 refused (RESOURCE_EXHAUSTED 1, INVALID_ARGUMENT 1), "
        "1 failed (DEADLINE_EXCEEDED 1)"
    )
    assert "over the 5 ok: end-to-end p50 102.0 ms, p95 104.0 ms" in text
    # Only failures: still a report (the counts), no percentiles.
    only = build_report(load_run_dir(write_run_dir(tmp_path / "bad", [failed])).traces)
    assert only.count == 0 and only.total == 1
    assert "no successful request" in render_report(only)


def test_report_since_filters_a_local_run_by_start_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _report_run(tmp_path)  # request i starts at T0 + i s
    start = T0 / 1e9 + 9.5
    argv = ["trace", "report", "--run-dir", str(run), "--json", "--start", str(start)]
    assert _cli([*argv, "--end", str(start + 5)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 5  # requests 10..14
    assert _cli([*argv[:-2], "--since", "5s", "--end", str(start + 5)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 5  # requests 10..14 again
    # --since counts back from now: these requests are from 2023.
    assert _cli(["trace", "report", "--run-dir", str(run), "--since", "1h"]) == 1
    assert "no requests" in capsys.readouterr().err


def test_pending_stages_and_request_ids(tmp_path: Path) -> None:
    from traceattr import pending_stages

    whole = load_run_dir(write_run_dir(tmp_path / "a", [unary_trace(1)])).traces[0]
    assert pending_stages(whole) == []
    b = unary_trace(2)
    del b.spans["vocoder"]  # the vocoder has not exported yet
    assert pending_stages(load_run_dir(write_run_dir(tmp_path / "b", [b])).traces[0]) == ["vocoder"]
    b = unary_trace(3)
    del b.spans["gateway"]  # the stages exported, the gateway not yet
    assert pending_stages(load_run_dir(write_run_dir(tmp_path / "c", [b])).traces[0]) == ["gateway"]
    b = unary_trace(4)
    b.spans["gateway"][0]["attributes"] += _kv({names.ATTR_REQUEST_ID: "order-17.a"})
    ts = load_run_dir(write_run_dir(tmp_path / "d", [unary_trace(5), b, unary_trace(6)]))
    assert select_trace(ts, "order-17.a").trace_id == f"{4:032x}"
    assert select_trace(ts, f"{4:032x}").request_ids == ["order-17.a"]
    with pytest.raises(TraceNotFoundError, match="not found"):
        select_trace(ts, "order-18")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="voxline")
    sub = parser.add_subparsers(dest="command", required=True)
    add_trace_commands(sub)
    args = parser.parse_args(argv)
    return int(args.fn(args))


def test_cli_show_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run_dir(tmp_path, [unary_trace(1), streaming_trace(2, offset_ms=1000)])
    assert _cli(["trace", f"{1:032x}", "--run-dir", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "unary" and out["e2e_ms"] == 100.0
    assert {s["stage"]: s["blame_ms"] for s in out["stages"]} == {
        "gateway": 14.0,
        "frontend": 14.0,
        "acoustic": 35.0,
        "vocoder": 29.0,
    }
    assert out["unattributed_ms"] == 9.0 and out["network_critical_path_ms"] == 8.0
    assert len(out["spans"]) == 20 and out["critical_path"][0]["stage"] == "gateway"
    # No id: the most recent request (the streaming one), also with --last.
    for extra in ([], ["--last"]):
        assert _cli(["trace", "--run-dir", str(run), "--json", *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["method"] == "stream" and out["ttfa_ms"] == 70.0


def test_cli_show_text_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run_dir(tmp_path, [streaming_trace(2)])
    assert _cli(["trace", "--run-dir", str(run)]) == 0
    text = capsys.readouterr().out
    assert "voxline.synthesis" in text and "slowest: acoustic" in text
    assert "vocoder.inference ×3" in text or "vocoder.inference x3" in text
    assert _cli(["trace", "--run-dir", str(run), "--full", "--width", "20", "--depth", "2"]) == 0
    text = capsys.readouterr().out
    assert "gateway.postprocess" in text and "vocoder.inference" not in text
    assert _cli(["trace", "ffff", "--run-dir", str(run), "--wait", "0"]) == 1
    assert "not found" in capsys.readouterr().err
    assert _cli(["trace", "--run-dir", str(run), "--since", "1h"]) == 2
    assert "trace report" in capsys.readouterr().err
    assert _cli(["trace", "report", "--run-dir", str(run), "--last"]) == 2
    assert _cli(["trace", "--run-dir", str(run), "--file", "x.json"]) == 2
    assert _cli(["trace", "--run-dir", str(tmp_path / "nowhere")]) == 1
    capsys.readouterr()
    assert _cli(["trace", "--file", str(FIXTURES / "jaeger-v3-GetServices.json")]) == 1
    assert "service list" in capsys.readouterr().err


def test_cli_file_formats(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["trace", "--file", str(FIXTURES / "jaeger-otlp2jaeger-out.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source_format"] == "jaeger-v1" and out["e2e_ms"] == 0.123


def test_cli_report_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _report_run(tmp_path)
    assert _cli(["trace", "report", "--run-dir", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 20
    assert out["tail"]["dominant"] == {"acoustic": 2}
    assert out["tail"]["dominant_stage"] == "acoustic"
    assert _cli(["trace", "report", "--run-dir", str(run)]) == 0
    assert "slow tail" in capsys.readouterr().out
    files = [str(p) for p in sorted(run.glob("*.traces.jsonl"))]
    argv = ["trace", "report", "--json"]
    for f in files:
        argv += ["--file", f]
    assert _cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 20


def test_print_attribution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run_dir(tmp_path / "run", [streaming_trace(2)])
    print_attribution(run)
    out = capsys.readouterr().out
    assert "slowest: acoustic" in out and "time to first audio 70.00 ms" in out
    assert "acoustic.inference" not in out  # phases are summarised in the table, not listed
    print_attribution(tmp_path / "empty")
    assert "trace attribution unavailable" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Tempo / Jaeger over HTTP (a local http.server emulating their query APIs)
# ---------------------------------------------------------------------------------------------


def _to_tempo_v1(b: TraceBuilder) -> dict[str, Any]:
    """Tempo's protobuf JSON: base64 ids, enum names, times as strings."""
    kinds = {1: "SPAN_KIND_INTERNAL", 2: "SPAN_KIND_SERVER", 3: "SPAN_KIND_CLIENT"}
    batches = []
    for request in b.requests().values():
        for rs in json.loads(json.dumps(request["resourceSpans"])):
            for ss in rs["scopeSpans"]:
                for s in ss["spans"]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in s:
                            s[key] = base64.b64encode(bytes.fromhex(s[key])).decode()
                    s["kind"] = kinds[s["kind"]]
            batches.append(rs)
    return {"batches": batches}


def _to_jaeger_v1(b: TraceBuilder) -> dict[str, Any]:
    """Jaeger's UI JSON: hex ids, microseconds, tags, processes."""
    kinds = {1: "internal", 2: "server", 3: "client"}
    spans, processes = [], {}
    for i, (service, request) in enumerate(b.requests().items()):
        pid = f"p{i + 1}"
        processes[pid] = {"serviceName": service, "tags": []}
        for s in request["resourceSpans"][0]["scopeSpans"][0]["spans"]:
            start, end = int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"])
            tags = [
                {"key": kv["key"], "type": "string", "value": next(iter(kv["value"].values()))}
                for kv in s["attributes"]
            ]
            tags.append({"key": "span.kind", "type": "string", "value": kinds[s["kind"]]})
            refs = (
                [{"refType": "CHILD_OF", "traceID": s["traceId"], "spanID": s["parentSpanId"]}]
                if "parentSpanId" in s
                else []
            )
            logs = [
                {"timestamp": int(e["timeUnixNano"]) // 1000, "fields": [
                    {"key": "event", "type": "string", "value": e["name"]}
                ]}
                for e in s.get("events", [])
            ]  # fmt: skip
            spans.append(
                {
                    "traceID": s["traceId"],
                    "spanID": s["spanId"],
                    "operationName": s["name"],
                    "references": refs,
                    "startTime": start // 1000,
                    "duration": (end - start) // 1000,
                    "tags": tags,
                    "logs": logs,
                    "processID": pid,
                }
            )
    return {"traceID": b.trace_id, "spans": spans, "processes": processes}


def _to_jaeger_v3(b: TraceBuilder) -> dict[str, Any]:
    return {
        "result": {"resourceSpans": [r for q in b.requests().values() for r in q["resourceSpans"]]}
    }


class _Backend(http.server.BaseHTTPRequestHandler):
    traces: ClassVar[dict[str, TraceBuilder]] = {}
    requests_seen: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: Any) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        self.requests_seen.append(self.path)
        parts = url.path.strip("/").split("/")
        if url.path.startswith("/tempo/api/search"):
            hits = [
                {"traceID": tid.lstrip("0"), "rootServiceName": "gateway"} for tid in self.traces
            ]
            return self._send(200, {"traces": hits, "metrics": {"inspectedTraces": len(hits)}})
        if url.path.startswith("/tempo/api/traces/"):
            b = self._find(parts[-1])
            return self._send(200, _to_tempo_v1(b)) if b else self._send(404, "trace not found")
        if url.path == "/jaeger/api/traces":
            assert query["service"] == ["gateway"] and "start" in query and "end" in query
            return self._send(200, {"data": [_to_jaeger_v1(b) for b in self.traces.values()]})
        if url.path.startswith("/jaeger/api/traces/"):
            b = self._find(parts[-1])
            if b is None:
                err = {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]}
                return self._send(404, err)
            return self._send(200, {"data": [_to_jaeger_v1(b)], "total": 0, "errors": None})
        if url.path == "/jaeger/api/v3/traces":
            assert "query.startTimeMin" in query and "query.start_time_min" in query
            merged = {"result": {"resourceSpans": []}}
            for b in self.traces.values():
                merged["result"]["resourceSpans"] += _to_jaeger_v3(b)["result"]["resourceSpans"]
            return self._send(200, merged)
        if url.path.startswith("/jaeger/api/v3/traces/"):
            b = self._find(parts[-1])
            if b is None:
                return self._send(404, {"error": {"httpCode": 404, "message": "trace not found"}})
            return self._send(200, _to_jaeger_v3(b))
        if url.path == "/broken/api/traces/1":
            return self._send(200, "<html>oops</html>")
        return self._send(500, "unexpected path")

    def _find(self, tid: str) -> TraceBuilder | None:
        wanted = tid.lower().rjust(32, "0")
        return self.traces.get(wanted)


@contextlib.contextmanager
def _serve(traces: list[TraceBuilder]) -> Iterator[str]:
    handler = type(
        "Handler", (_Backend,), {"traces": {b.trace_id: b for b in traces}, "requests_seen": []}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("backend", "prefix"), [("tempo", "/tempo"), ("jaeger", "/jaeger"), ("jaeger-v3", "/jaeger")]
)
def test_fetch_one_trace_from_each_backend(backend: str, prefix: str) -> None:
    with _serve([streaming_trace(2)]) as base:
        ts = fetch_trace(backend, base + prefix, f"{2:032x}")
        attr = analyze(select_trace(ts))
        # Same numbers whatever the wire format (base64 ids / µs times / hex ids).
        assert attr.method == "stream" and attr.e2e_ns == 200 * MS and attr.ttfa_ns == 70 * MS
        assert {s.stage: s.blame_ns // MS for s in attr.stages} == {
            "gateway": 15,
            "frontend": 16,
            "acoustic": 92,
            "vocoder": 70,
        }
        with pytest.raises(TraceNotFoundError, match="trace not found"):
            fetch_trace(backend, base + prefix, "deadbeef")


def test_fetch_errors_are_clear() -> None:
    with _serve([]) as base:
        with pytest.raises(Exception, match="not JSON"):
            fetch_trace("tempo", base + "/broken", "1")
        with pytest.raises(Exception, match="HTTP 500"):
            fetch_trace("tempo", base + "/nothing-here", "1")
    with pytest.raises(Exception, match="cannot reach"):
        fetch_trace("jaeger", "127.0.0.1:9", "1", timeout=2)


@pytest.mark.parametrize(
    ("backend", "prefix"), [("tempo", "/tempo"), ("jaeger", "/jaeger"), ("jaeger-v3", "/jaeger")]
)
def test_search_and_report_over_http(backend: str, prefix: str) -> None:
    traces = [
        unary_trace(1),
        unary_trace(2, offset_ms=300, acoustic_inference=100),
        streaming_trace(3),
    ]
    with _serve(traces) as base:
        ts = search_traces(backend, base + prefix, start_s=0, end_s=2e9, limit=10)
        assert len(ts.traces) == 3
        report = build_report(ts.traces)
        assert report.count == 3 and report.tail_dominant == "acoustic"


def test_cli_over_http(capsys: pytest.CaptureFixture[str]) -> None:
    with _serve([streaming_trace(2), unary_trace(1)]) as base:
        assert _cli(["trace", f"{2:032x}", "--tempo", base + "/tempo", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["dominant"] == "acoustic"
        assert _cli(["trace", "abc", "--jaeger", base + "/jaeger", "--wait", "0"]) == 1
        assert "trace not found" in capsys.readouterr().err
        assert _cli(["trace", "--jaeger-v3", base + "/jaeger"]) == 2  # an id is required
        capsys.readouterr()
        argv = ["trace", "report", "--jaeger", base + "/jaeger", "--since", "30m", "--json"]
        assert _cli(argv) == 0
        assert json.loads(capsys.readouterr().out)["count"] == 2
        argv = ["trace", "report", "--tempo", base + "/tempo", "--start", "0", "--end", "2e9"]
        assert _cli(argv) == 0
        assert "2 synthesis requests" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# A stream's phases as a timeline on its span
# ---------------------------------------------------------------------------------------------


def test_phase_timeline_round_trip_through_otlp_and_jaeger_forms() -> None:
    """Phases written by `PhaseTimeline` come back as phase spans of that span, whether the
    attribute arrives as an OTLP int array or as the JSON text Jaeger turns arrays into."""
    from opentelemetry.sdk.trace import TracerProvider

    from telemetry import PhaseTimeline
    from traceattr.model import Span
    from traceattr.timeline import ATTR_FROM_TIMELINE, expand_timelines

    tracer = TracerProvider().get_tracer("test")
    span = tracer.start_span("/voxline.v1.Vocoder/VocodeStream", start_time=1_000_000_000)
    timeline = PhaseTimeline("vocoder")
    layout = [
        ("queue", 0, 2_000_000),
        ("inference", 2_000_000, 9_000_000),
        ("transfer", 9_000_000, 9_500_000),
        ("queue", 9_500_000, 10_000_000),
        ("inference", 10_000_000, 15_000_000),
    ]
    for phase, a, b in layout:
        timeline.add(phase, 1_000_000_000 + a, 1_000_000_000 + b)
    timeline.write_to(span)
    span.end(end_time=1_016_000_000)
    attributes = dict(span.attributes or {})
    assert list(attributes[names.phase_intervals_attribute("inference")]) == [
        2000,
        7000,
        10000,
        5000,
    ]
    for form in (attributes, {k: json.dumps(v) if isinstance(v, tuple | list) else v
                              for k, v in attributes.items()}):  # fmt: skip
        parent = Span(
            "t" * 32, "a" * 16, None, span.name, "server", 1_000_000_000, 1_016_000_000,
            "vocoder", attributes=form,
        )  # fmt: skip
        rebuilt = expand_timelines([parent])[1:]
        got = [
            (s.attributes[names.ATTR_PHASE], s.start_ns - 1_000_000_000, s.end_ns - 1_000_000_000)
            for s in rebuilt
        ]
        assert got == layout
        assert all(
            s.parent_id == parent.span_id and s.attributes[ATTR_FROM_TIMELINE] for s in rebuilt
        )
        assert {s.name for s in rebuilt} == {
            "vocoder.queue",
            "vocoder.inference",
            "vocoder.transfer",
        }
        assert len({s.span_id for s in rebuilt}) == len(rebuilt)


def test_phase_timeline_is_bounded_per_phase() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from telemetry import PhaseTimeline

    span = TracerProvider().get_tracer("test").start_span("s", start_time=0)
    timeline = PhaseTimeline("gateway")
    for i in range(names.MAX_PHASE_INTERVALS + 5):
        timeline.add("transfer", i * 1000, i * 1000 + 500)
    timeline.write_to(span)
    attributes = dict(span.attributes or {})
    assert (
        len(attributes[names.phase_intervals_attribute("transfer")])
        == 2 * names.MAX_PHASE_INTERVALS
    )
    assert attributes[names.ATTR_PHASE_INTERVALS_DROPPED] == 5


def test_latest_logged_trace_id_reads_the_gateway_log(tmp_path: Path) -> None:
    from traceattr import latest_logged_trace_id

    assert latest_logged_trace_id(tmp_path) is None  # no log
    ok, refused = "a" * 32, "b" * 32
    lines = [
        json.dumps({"message": "synthesized", "trace_id": ok, "request_id": "r1"}),
        json.dumps({"message": "GetModelInfo -> UNAVAILABLE: x", "trace_id": "c" * 32}),
        json.dumps({"message": "Synthesize -> INVALID_ARGUMENT: x", "trace_id": refused,
                    "rpc.method": "Synthesize", "code": "INVALID_ARGUMENT"}),
        json.dumps({"message": "stage call failed", "trace_id": "d" * 32}),
        "--- supervisor: vocoder exited with code 1 after 2.0 s; restarting in 0.5 s ---",
    ]  # fmt: skip
    (tmp_path / "gateway.log").write_text("\n".join(lines) + "\n")
    assert latest_logged_trace_id(tmp_path) == refused
    (tmp_path / "gateway.log").write_text("\n".join(lines[:2]) + "\n")
    assert latest_logged_trace_id(tmp_path) == ok
