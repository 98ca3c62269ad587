"""Telemetry across the four real services, exported over OTLP to a real receiver."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.stack import SERVICES, LocalStack, free_port
from telemetry import flatten_spans, names, read_otlp_json_lines
from telemetry.otlp_receiver import OtlpReceiver
from traceattr.analysis import analyze
from traceattr.parse import parse_documents
from traceattr.timeline import phase_intervals

SERVER, CLIENT = 2, 3
STAGES = ("frontend", "acoustic", "vocoder")
# A marker no model or log would produce by itself: it must never leave the gateway's input.
MARKER = "Zebulon" + secrets.token_hex(4)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced_stack(receiver: OtlpReceiver, tmp_path_factory) -> Iterator[LocalStack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with LocalStack(tmp_path_factory.mktemp("traced"), env=env) as s:
        with grpc.insecure_channel(s.gateway) as channel:
            # Fill the gateway's voice catalogue first, so its StageInfo calls are not part
            # of the traces under test.
            synthesizer_pb2_grpc.SynthesizerStub(channel).ListVoices(pb.ListVoicesRequest())
        yield s


def _synthesize(stack: LocalStack, text: str, stream: bool, metadata=()) -> None:
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        request = pb.SynthesizeRequest(text=text)
        if stream:
            assert len(list(stub.SynthesizeStream(request, metadata=metadata, timeout=90))) > 0
        else:
            assert stub.Synthesize(request, metadata=metadata, timeout=90).duration_seconds > 0


def _trace_of(receiver: OtlpReceiver, method: str, seen: set[str]) -> list[dict[str, Any]]:
    """All spans of the newest trace whose gateway server span is `method`."""

    def find() -> list[dict[str, Any]] | None:
        spans = receiver.spans()
        roots = [
            s
            for s in spans
            if s["name"] == f"/voxline.v1.Synthesizer/{method}"
            and s["kind"] == SERVER
            and s["trace_id"] not in seen
        ]
        if not roots:
            return None
        trace_id = roots[-1]["trace_id"]
        trace = [s for s in spans if s["trace_id"] == trace_id]
        return trace if _complete(trace) else None

    trace = receiver.wait_for(lambda r: find(), timeout=30)
    seen.add(trace[0]["trace_id"])
    return trace


def _complete(trace: list[dict[str, Any]]) -> bool:
    """Every service has exported its part: each client span has its server span, and each
    server span its phases, as spans or as a stream's timeline (processes export on their own
    schedules)."""
    clients = [s for s in trace if s["kind"] == CLIENT]
    servers = [s for s in trace if s["kind"] == SERVER]
    parents = {s["parent_span_id"] for s in trace}
    root = any(s["name"].startswith("/voxline.v1.Synthesizer/") for s in servers)
    return (
        root
        and bool(clients)
        and all(any(s["parent_span_id"] == c["span_id"] for s in servers) for c in clients)
        and all(
            s["span_id"] in parents or phase_intervals(s["start_time_unix_nano"], s["attributes"])
            for s in servers
        )
    )


def _children(trace: list[dict[str, Any]], span: dict[str, Any]) -> list[dict[str, Any]]:
    """The exported children of `span`, plus the phases a stream recorded on it as a timeline."""
    rebuilt = [
        {
            "name": names.phase_span_name(span["attributes"][names.ATTR_STAGE], phase),
            "start_time_unix_nano": start,
            "end_time_unix_nano": end,
            "attributes": {names.ATTR_STAGE: span["attributes"][names.ATTR_STAGE]},
            "kind": 1,
        }
        for phase, start, end in phase_intervals(span["start_time_unix_nano"], span["attributes"])
    ]
    return [s for s in trace if s["parent_span_id"] == span["span_id"]] + rebuilt


def _covered(span: dict[str, Any], children: list[dict[str, Any]]) -> float:
    """Fraction of `span` covered by the union of its children's intervals."""
    start, end = span["start_time_unix_nano"], span["end_time_unix_nano"]
    intervals = sorted(
        (max(c["start_time_unix_nano"], start), min(c["end_time_unix_nano"], end)) for c in children
    )
    covered, cursor = 0, start
    for a, b in intervals:
        a = max(a, cursor)
        if b > a:
            covered += b - a
            cursor = b
    return covered / max(end - start, 1)


def _check_structure(trace: list[dict[str, Any]], method: str) -> None:
    assert len({s["trace_id"] for s in trace}) == 1
    root = next(s for s in trace if s["name"] == f"/voxline.v1.Synthesizer/{method}")
    synthesis = [s for s in _children(trace, root) if s["name"] == names.SPAN_SYNTHESIS]
    assert len(synthesis) == 1
    clients = [s for s in trace if s["kind"] == CLIENT]
    assert {s["resource"]["service.name"] for s in clients} == {"gateway"}
    for client in clients:
        assert client["parent_span_id"] == synthesis[0]["span_id"]
        servers = [s for s in _children(trace, client) if s["kind"] == SERVER]
        assert len(servers) == 1, client["name"]
    stage_servers = [
        s for s in trace if s["kind"] == SERVER and s["resource"]["service.name"] in STAGES
    ]
    assert {s["resource"]["service.name"] for s in stage_servers} == set(STAGES)
    for server in stage_servers:
        stage = server["resource"]["service.name"]
        phases = _children(trace, server)
        assert {p["name"] for p in phases} >= {
            f"{stage}.preprocess",
            f"{stage}.queue",
            f"{stage}.inference",
        }, server["name"]
        assert all(p["attributes"][names.ATTR_STAGE] == stage for p in phases)
        assert server["attributes"][names.ATTR_MODEL_NAME]
        assert server["attributes"][names.ATTR_DEVICE] == "cpu"
        _check_phase_layout(server, phases)


# Time in a stage's server span outside all of its phases that is still scheduling noise: a
# loaded 2-core machine can deschedule a thread for a few milliseconds (a CFS time slice)
# between two phases or after the last one, which on a 17 ms span is over 5 %. A structural
# hole (work done outside any phase) is either proportional to the work, which the 5 % bound
# still catches on long spans, or is missing phases, which the order and name checks catch.
_UNCOVERED_FRACTION = 0.05
_UNCOVERED_NOISE_NS = 3_000_000
# Timeline phases are recorded in whole microseconds.
_CLOCK_SLACK_NS = 1_000


def _check_phase_layout(server: dict[str, Any], phases: list[dict[str, Any]]) -> None:
    """The phases lie inside `server`'s span, in order without overlapping, and cover it but
    for scheduling noise: uncovered <= max(5 % of the span, 3 ms). A fraction alone
    (coverage >= 95 %) failed on a busy machine: 91.4 % of a 17.5 ms span, 1.5 ms of noise."""
    start, end = server["start_time_unix_nano"], server["end_time_unix_nano"]
    ordered = sorted(phases, key=lambda p: (p["start_time_unix_nano"], p["end_time_unix_nano"]))
    layout = [
        (p["name"], (p["start_time_unix_nano"] - start) / 1e6,
         (p["end_time_unix_nano"] - p["start_time_unix_nano"]) / 1e6)
        for p in ordered
    ]  # fmt: skip
    where = f"{server['name']} ({(end - start) / 1e6:.2f} ms): {layout}"
    for phase in ordered:
        assert start - _CLOCK_SLACK_NS <= phase["start_time_unix_nano"], where
        assert phase["start_time_unix_nano"] <= phase["end_time_unix_nano"], where
        assert phase["end_time_unix_nano"] <= end + _CLOCK_SLACK_NS, where
    for earlier, later in itertools.pairwise(ordered):
        assert earlier["end_time_unix_nano"] <= later["start_time_unix_nano"] + _CLOCK_SLACK_NS, (
            f"overlapping phases: {where}"
        )
    uncovered = (end - start) * (1 - _covered(server, phases))
    allowed = max(_UNCOVERED_FRACTION * (end - start), _UNCOVERED_NOISE_NS)
    assert uncovered <= allowed, (
        f"phases leave {uncovered / 1e6:.2f} ms uncovered (allowed {allowed / 1e6:.2f}): {where}"
    )


def _traced_request(traced_stack, receiver, method: str, text: str) -> list[dict[str, Any]]:
    """One request whose trace passes `_check_structure`.

    A structural hole (work outside any phase) shows in every trace; a single scheduler
    hiccup on a loaded 2-core machine (a millisecond after the last phase of a 20 ms span)
    shows in one. So up to three requests are made and the first complete one is returned;
    if all three fail, the last error (with every phase's offsets) is raised.
    """
    seen: set[str] = set()
    error: AssertionError | None = None
    for _ in range(3):
        _synthesize(traced_stack, text, stream=method == "SynthesizeStream")
        trace = _trace_of(receiver, method, seen)
        try:
            _check_structure(trace, method)
            return trace
        except AssertionError as exc:
            error = exc
    assert error is not None
    raise error


def test_unary_one_trace_with_phases(traced_stack, receiver) -> None:
    text = "Tracing one unary request. It has two sentences."
    trace = _traced_request(traced_stack, receiver, "Synthesize", text)
    # Two sentences: one acoustic and one vocoder call each.
    calls = [s["name"] for s in trace if s["kind"] == CLIENT]
    assert calls.count("/voxline.v1.Vocoder/Vocode") == 2
    assert calls.count("/voxline.v1.AcousticModel/Generate") == 2


def test_stream_one_trace_with_first_audio_event(traced_stack, receiver) -> None:
    text = "Tracing one streaming request."
    trace = _traced_request(traced_stack, receiver, "SynthesizeStream", text)
    root = next(s for s in trace if s["name"] == "/voxline.v1.Synthesizer/SynthesizeStream")
    events = [e["name"] for e in root["events"]]
    assert names.EVENT_FIRST_AUDIO in events
    calls = {s["name"] for s in trace if s["kind"] == CLIENT}
    assert {"/voxline.v1.AcousticModel/GenerateStream", "/voxline.v1.Vocoder/VocodeStream"} <= calls


def test_stream_spans_grow_with_sentences_not_chunks(traced_stack, receiver) -> None:
    """A stream's per-chunk phases are a timeline on its spans, not one span each: a sentence
    of many windows exports as many spans as a short one, and `voxline trace` still explains
    at least 99 % of the request's time (critical path in named phases or on the wire)."""
    seen = {s["trace_id"] for s in receiver.spans()}  # earlier tests' requests
    short = "A short sentence."
    long = (
        "This one long sentence runs on and on with many words, so that the vocoder has to "
        "make a great many windows of audio before it reaches the very end of it all."
    )

    def spans_of(sentences: int) -> list[dict[str, Any]]:
        # Per request: gateway server + synthesis + AnalyzeStream client/server; per
        # sentence: GenerateStream and VocodeStream client/server. A stage's phase spans
        # would end (and be exported) before its server span, so none can arrive later.
        expected = 4 + 4 * sentences
        trace_id = _trace_of(receiver, "SynthesizeStream", seen)[0]["trace_id"]
        trace = receiver.wait_for(
            lambda r: (
                (t := [s for s in r.spans() if s["trace_id"] == trace_id])
                and len(t) >= expected
                and t
            ),
            timeout=30,
        )
        assert len(trace) == expected, sorted(s["name"] for s in trace)
        return trace

    for text in (short, long):
        _synthesize(traced_stack, text, stream=True)
        spans_of(sentences=1)
    explained = []
    for _ in range(3):  # one scheduler hiccup on a loaded 2-core machine can cost a trace
        _synthesize(traced_stack, short + " " + long, stream=True)
        trace = spans_of(sentences=2)
        traces = parse_documents(receiver.trace_requests()).traces
        attribution = analyze(next(t for t in traces if t.trace_id == trace[0]["trace_id"]))
        assert attribution.method == names.SYNTHESIS_METHOD_STREAM
        explained.append(attribution.explained_ns / attribution.e2e_ns)
        if explained[-1] >= 0.99:
            break
    assert max(explained) >= 0.99, explained


def test_text_stream_one_trace_with_phases(traced_stack, receiver) -> None:
    """SynthesizeTextStream: one trace, the usual structure, first-audio event, attribution."""
    text = "Text streamed in. It arrives a few characters at a time."
    messages = [pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest())] + [
        pb.SynthesizeTextStreamRequest(text=text[i : i + 4]) for i in range(0, len(text), 4)
    ]
    seen = {s["trace_id"] for s in receiver.spans()}
    with grpc.insecure_channel(traced_stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        assert list(stub.SynthesizeTextStream(iter(messages), timeout=90))
    trace = _trace_of(receiver, "SynthesizeTextStream", seen)
    _check_structure(trace, "SynthesizeTextStream")
    root = next(s for s in trace if s["name"] == "/voxline.v1.Synthesizer/SynthesizeTextStream")
    assert names.EVENT_FIRST_AUDIO in [e["name"] for e in root["events"]]
    synthesis = next(s for s in trace if s["name"] == names.SPAN_SYNTHESIS)
    assert synthesis["attributes"][names.ATTR_SYNTHESIS_METHOD] == "text_stream"
    assert synthesis["attributes"][names.ATTR_TEXT_LENGTH] == len(text)


def test_incoming_traceparent_is_continued(traced_stack, receiver) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (("traceparent", f"00-{trace_id}-{parent}-01"),)
    _synthesize(traced_stack, "Continue my trace.", stream=False, metadata=metadata)

    def spans() -> list[dict[str, Any]] | None:
        got = [s for s in receiver.spans() if s["trace_id"] == trace_id]
        return got if _complete(got) else None

    got = receiver.wait_for(lambda r: spans(), timeout=30)
    root = next(s for s in got if s["name"] == "/voxline.v1.Synthesizer/Synthesize")
    assert root["parent_span_id"] == parent


def test_metrics_names_units_labels_and_exemplar(traced_stack, receiver) -> None:
    _synthesize(traced_stack, "Metrics, please.", stream=True)
    trace_ids = {s["trace_id"] for s in receiver.spans()}
    expected = {
        names.METRIC_STAGE_DURATION: "s",
        names.METRIC_STAGE_QUEUE_DURATION: "s",
        names.METRIC_STAGE_ACTIVE_REQUESTS: "{request}",
        names.METRIC_STAGE_REQUESTS: "{request}",
        names.METRIC_SYNTHESIS_DURATION: "s",
        names.METRIC_SYNTHESIS_TIME_TO_FIRST_AUDIO: "s",
        names.METRIC_SYNTHESIS_REAL_TIME_FACTOR: "1",
        names.METRIC_SYNTHESIS_AUDIO_DURATION: "s",
        names.METRIC_SYNTHESIS_CHARACTERS: "{char}",
        names.METRIC_RPC_SERVER_DURATION: "s",
        names.METRIC_RPC_CLIENT_DURATION: "s",
    }
    receiver.wait_for(lambda r: all(r.metric(n) is not None for n in expected) or None, timeout=30)
    metrics = receiver.metrics()
    for name, unit in expected.items():
        assert any(m["name"] == name and m["unit"] == unit for m in metrics), name
    stage_points = [
        p for m in metrics if m["name"] == names.METRIC_STAGE_DURATION for p in m["data_points"]
    ]
    stages = {p["attributes"][names.ATTR_STAGE] for p in stage_points}
    assert stages >= {"gateway", "frontend", "acoustic", "vocoder"}
    phases = {p["attributes"][names.ATTR_PHASE] for p in stage_points}
    assert phases <= names.PHASES and {"queue", "inference"} <= phases
    synth = [
        p for m in metrics if m["name"] == names.METRIC_SYNTHESIS_DURATION for p in m["data_points"]
    ]
    assert {p["attributes"][names.ATTR_SYNTHESIS_METHOD] for p in synth} <= names.SYNTHESIS_METHODS
    assert all(p["attributes"][names.ATTR_VOICE] == "voxline-en-us" for p in synth)
    exemplar_traces = {e["trace_id"] for p in stage_points + synth for e in p.get("exemplars", [])}
    assert exemplar_traces & trace_ids, "latency histograms carry no exemplar of our traces"


def test_input_text_never_exported_or_logged(traced_stack, receiver) -> None:
    text = f"My secret is {MARKER}. Please keep it."
    _synthesize(traced_stack, text, stream=False)
    _synthesize(traced_stack, text, stream=True)
    # Bad input with the marker, too: error paths must not echo it either.
    with grpc.insecure_channel(traced_stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Synthesize(pb.SynthesizeRequest(text=MARKER, voice=MARKER), timeout=30)
        # Text streamed in, in fragments.
        fragments = [text[i : i + 5] for i in range(0, len(text), 5)]
        messages = [pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest())] + [
            pb.SynthesizeTextStreamRequest(text=f) for f in fragments
        ]
        assert list(stub.SynthesizeTextStream(iter(messages), timeout=90))
    time.sleep(3)  # one more export interval
    blob = json.dumps([receiver.trace_requests(), receiver.metric_requests()])
    assert receiver.spans() and MARKER.lower() not in blob.lower()
    for log in traced_stack.run_dir.glob("*.log"):
        assert MARKER.lower() not in log.read_text().lower(), log.name


def test_collector_unreachable_costs_nothing(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": dead, "OTEL_METRIC_EXPORT_INTERVAL": "500"}
    with LocalStack(tmp_path, env=env) as stack:
        for stream in (False, True, False):
            _synthesize(stack, "The collector is down, but I am not.", stream=stream)
        for service in SERVICES:
            with grpc.insecure_channel(stack.address(service)) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_local_mode_writes_otlp_json_files(stack: LocalStack, synthesizer) -> None:
    """The default (no endpoint): each service writes OTLP-JSON lines that parse back."""
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ
    # Fill the voice catalogue first (its StageInfo calls have no model phases).
    synthesizer.ListVoices(pb.ListVoicesRequest(), timeout=30)
    synthesizer.Synthesize(pb.SynthesizeRequest(text="Local files."), timeout=60)

    def spans() -> list[dict[str, Any]] | None:
        files = {s: stack.run_dir / f"{s}.traces.jsonl" for s in SERVICES}
        if not all(f.exists() for f in files.values()):
            return None
        got = flatten_spans(r for f in files.values() for r in read_otlp_json_lines(f))
        roots = [s for s in got if s["name"] == "/voxline.v1.Synthesizer/Synthesize"]
        if not roots:
            return None
        trace = [s for s in got if s["trace_id"] == roots[-1]["trace_id"]]
        return trace if _complete(trace) else None

    deadline = time.monotonic() + 30
    trace = spans()
    while trace is None and time.monotonic() < deadline:
        time.sleep(0.5)
        trace = spans()
    assert trace is not None, "local OTLP-JSON files never held a whole trace"
    assert all(len(s["trace_id"]) == 32 and len(s["span_id"]) == 16 for s in trace)
    # Metrics are exported on an interval (15 s by default): wait for the first export.
    path = stack.run_dir / "gateway.metrics.jsonl"
    deadline = time.monotonic() + 40
    while not (path.exists() and read_otlp_json_lines(path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    metrics = read_otlp_json_lines(path)
    assert metrics and "resourceMetrics" in metrics[0]


def test_client_cancel_cancels_upstream_streams(traced_stack, receiver) -> None:
    """A caller that hangs up mid-stream stops the stages' work (their spans say CANCELLED)."""
    trace_id = secrets.token_hex(16)
    metadata = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
    text = "This single long sentence keeps the vocoder busy for many seconds of audio output"
    with grpc.insecure_channel(traced_stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        call = stub.SynthesizeStream(pb.SynthesizeRequest(text=text), metadata=metadata)
        next(call)
        call.cancel()

    def vocoder_span() -> dict[str, Any] | None:
        return next(
            (
                s
                for s in receiver.spans()
                if s["trace_id"] == trace_id and s["name"] == "/voxline.v1.Vocoder/VocodeStream"
                and s["kind"] == SERVER
            ),
            None,
        )  # fmt: skip

    span = receiver.wait_for(lambda r: vocoder_span(), timeout=60)
    assert span["attributes"].get("rpc.grpc.status_code") == grpc.StatusCode.CANCELLED.value[0]
    assert span["status"]["code"] == 2  # ERROR


GONE_TEXT = " ".join(
    [
        "When the caller goes away, the stages must stop working for it. This paragraph is "
        "long enough to keep the acoustic model and the vocoder busy for many seconds of audio. "
        "It has several sentences, so work for later ones is queued while the first is being "
        "vocoded. None of that queued work may run once nobody is listening any more."
    ]
    # About 100 s of audio: several seconds of work even for the fast CPU vocoder (~20x
    # real time on the local stack), so the caller leaves while most of it is still queued.
    * 4
)
# A batch already running when the caller leaves finishes (a model call cannot be
# interrupted); nothing may start after the cancellation has propagated. Bounds on this
# loaded 2-core machine: propagation within START_GRACE_S, the running window within
# WINDOW_S.
START_GRACE_S = 0.5
WINDOW_S = 2.5


@pytest.mark.parametrize("how", ["unary-deadline", "unary-cancel", "stream-cancel"])
def test_no_stage_computes_for_a_caller_that_went_away(traced_stack, receiver, how: str) -> None:
    """Measured from the stages' batch spans (linked to the request's trace), not from sleeps
    or CPU: after the caller's deadline or cancellation no batch starts for it, and the last
    one ends within one window."""
    trace_id = secrets.token_hex(16)
    metadata = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
    request = pb.SynthesizeRequest(text=GONE_TEXT)
    with grpc.insecure_channel(traced_stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        if how == "unary-deadline":
            t0 = time.time()
            with pytest.raises(grpc.RpcError) as info:
                stub.Synthesize(request, metadata=metadata, timeout=1.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            gone = t0 + 1.5
        elif how == "unary-cancel":
            future = stub.Synthesize.future(request, metadata=metadata, timeout=120)
            time.sleep(1.5)  # the caller's own behaviour: hang up after 1.5 s
            gone = time.time()
            future.cancel()
        else:
            call = stub.SynthesizeStream(request, metadata=metadata, timeout=120)
            next(call)
            gone = time.time()
            call.cancel()

    def linked_batches() -> list[dict[str, Any]]:
        return [
            s
            for s in receiver.spans()
            if s["name"].endswith(".batch")
            and any(link["trace_id"] == trace_id for link in s["links"])
        ]

    # Let every stage export what it ran (BatchSpanProcessor flushes every 200 ms here).
    receiver.wait_for(lambda r: any(s["name"] == "vocoder.batch" for s in linked_batches()), 30)
    time.sleep(3)
    batches = linked_batches()
    late_starts = [
        (s["name"], round(s["start_time_unix_nano"] / 1e9 - gone, 3))
        for s in batches
        if s["start_time_unix_nano"] / 1e9 > gone + START_GRACE_S
    ]
    assert not late_starts, late_starts
    last_end = max(s["end_time_unix_nano"] for s in batches) / 1e9 - gone
    print(f"{how}: {len(batches)} batches; the last ended {last_end:+.3f} s after the caller left")
    assert last_end < WINDOW_S, f"last batch for the request ended {last_end:.2f} s after"
