"""Server-side limits on public calls: no caller holds a gateway thread, slot or memory forever.

One gateway with one admission slot and short limits (services/gateway/deadlines.py): each
way a caller can stall it (no request body, no text-stream config, no next fragment, not
reading its stream, a request that outlives the total deadline) ends in a precise status,
frees the slot, and a normal request runs afterwards. Bounds are the configured limits plus
generous margins for a loaded machine: the tests check that a wait ends, not how fast.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import log_text
from grpc_health.v1 import health_pb2, health_pb2_grpc
from voxline.v1 import frontend_pb2, synthesizer_pb2_grpc
from voxline.v1 import synthesizer_pb2 as pb

from services.cli.stack import LocalStack
from services.gateway.deadlines import PROMPT_S
from services.gateway.pipeline import RequestBudget
from services.gateway.service import LATE_CALLERS
from services.runtime.errors import InvalidArgument
from services.runtime.health import MAX_WATCHERS
from services.runtime.voice import MAX_AUDIO_SECONDS, MAX_SENTENCES

READ_S, GAP_S, SEND_S, TOTAL_S = 3.0, 2.0, 2.0, 8.0
#: Room for a loaded 2-core machine on top of each limit.
MARGIN_S = 20.0
TEXT = "A short sentence to check that the gateway still serves."


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    args = {
        "gateway": [
            "--max-active", "1",
            "--max-waiting", "4",
            "--max-admission-wait-ms", str(int(1000 * (TOTAL_S + MARGIN_S))),
            "--request-read-timeout-s", str(READ_S),
            "--text-gap-timeout-s", str(GAP_S),
            "--send-timeout-s", str(SEND_S),
            "--request-timeout-s", str(TOTAL_S),
        ]
    }  # fmt: skip
    with LocalStack(tmp_path_factory.mktemp("limits"), extra_args=args) as stack:
        yield stack


@pytest.fixture()
def channel(gateway: LocalStack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.gateway) as ch:
        yield ch


def _serves(channel: grpc.Channel) -> None:
    """A normal request completes (the one admission slot is free)."""
    stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
    reply = stub.Synthesize(pb.SynthesizeRequest(text=TEXT), timeout=TOTAL_S + MARGIN_S)
    assert reply.duration_seconds > 0.5


def _never(stop: threading.Event) -> Iterator[object]:
    """A request stream that sends nothing until the test ends."""
    stop.wait(TOTAL_S + 2 * MARGIN_S)
    return
    yield  # pragma: no cover - makes this a generator


def _code_and_time(call: object) -> tuple[grpc.StatusCode, str, float]:
    start = time.monotonic()
    try:
        for _ in call:  # type: ignore[attr-defined]
            pass
    except grpc.RpcError as err:
        return err.code(), err.details() or "", time.monotonic() - start
    raise AssertionError("the call ended OK")


def test_unary_call_without_a_body_ends_deadline_exceeded(channel: grpc.Channel) -> None:
    stop = threading.Event()
    method = channel.stream_unary(
        "/voxline.v1.Synthesizer/Synthesize",
        request_serializer=pb.SynthesizeRequest.SerializeToString,
        response_deserializer=pb.SynthesizeResponse.FromString,
    )
    start = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as err:
            method(_never(stop), timeout=READ_S + MARGIN_S)
    finally:
        stop.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"no request message within {READ_S:g} s" in (err.value.details() or "")
    assert time.monotonic() - start < READ_S + MARGIN_S
    _serves(channel)


def test_text_stream_without_a_config_ends_deadline_exceeded(channel: grpc.Channel) -> None:
    stop = threading.Event()
    stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
    try:
        code, details, took = _code_and_time(
            stub.SynthesizeTextStream(_never(stop), timeout=READ_S + MARGIN_S)
        )
    finally:
        stop.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"no config message within {READ_S:g} s" in details
    assert took < READ_S + MARGIN_S
    _serves(channel)


def test_late_callers_are_capped_and_prompt_ones_still_served(channel: grpc.Channel) -> None:
    """LATE_CALLERS streams that never send their config wait; one more is refused at once
    (it would take a thread kept for refusals and health); a prompt caller is served."""
    stop = threading.Event()
    stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
    late = [
        stub.SynthesizeTextStream(_never(stop), timeout=READ_S + MARGIN_S)
        for _ in range(LATE_CALLERS)
    ]
    try:
        time.sleep(PROMPT_S * 3)  # every late call is past its prompt wait
        code, details, _ = _code_and_time(stub.SynthesizeTextStream(_never(stop), timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "slow to send their request message" in details
        _serves(channel)
        assert {_code_and_time(call)[0] for call in late} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    finally:
        stop.set()


def _config_then(fragments: list[tuple[float, str]], stop: threading.Event) -> Iterator[object]:
    yield pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest())
    for pause, text in fragments:
        if stop.wait(pause):
            return
        yield pb.SynthesizeTextStreamRequest(text=text)
    stop.wait(TOTAL_S + 2 * MARGIN_S)


def test_idle_text_stream_loses_its_slot_after_the_gap(channel: grpc.Channel) -> None:
    """Config and one sentence, then silence: the stream ends DEADLINE_EXCEEDED after the
    fragment gap and its slot (the only one) serves the next caller."""
    stop = threading.Event()
    stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
    requests = _config_then([(0.0, "Hello there. ")], stop)
    try:
        code, details, took = _code_and_time(
            stub.SynthesizeTextStream(requests, timeout=TOTAL_S + MARGIN_S)
        )
    finally:
        stop.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"no text fragment, flush or end within {GAP_S:g} s" in details
    assert took < GAP_S + MARGIN_S
    _serves(channel)


def test_trickling_text_stream_ends_at_the_total_deadline(channel: grpc.Channel) -> None:
    """Fragments keep coming within the gap, but the request outlives its total deadline."""
    stop = threading.Event()
    stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
    requests = _config_then([(GAP_S / 4, "word ")] * 400, stop)
    try:
        code, _, took = _code_and_time(stub.SynthesizeTextStream(requests))
    finally:
        stop.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert TOTAL_S - 1.0 < took < TOTAL_S + MARGIN_S
    _serves(channel)


def test_a_caller_that_stops_reading_loses_its_slot(
    gateway: LocalStack, channel: grpc.Channel
) -> None:
    """A long stream read once, then not at all: flow control stalls the gateway's send; the
    watchdog cancels the call and the next caller gets the slot. (The stalled caller's
    channel keeps HTTP/2's initial 64 KiB window: with window growth, megabytes of audio fit
    in flight first and the stall starts later.)"""
    long_text = " ".join([TEXT] * 60)
    with grpc.insecure_channel(gateway.gateway, [("grpc.http2.bdp_probe", 0)]) as stalled_channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(stalled_channel)
        stalled = stub.SynthesizeStream(pb.SynthesizeRequest(text=long_text))
        next(stalled)  # admitted and streaming; now stop reading
        _serves(channel)  # waits for the slot, which the watchdog frees
        code, _, _ = _code_and_time(stalled)
    assert code == grpc.StatusCode.CANCELLED
    assert "cancelled a call: its caller stopped reading" in log_text(gateway.run_dir)


def test_health_watch_flood_keeps_no_state(gateway: LocalStack, channel: grpc.Channel) -> None:
    """Watches of unknown names end at once with SERVICE_UNKNOWN; watches of a known name are
    capped (RESOURCE_EXHAUSTED past MAX_WATCHERS); the gateway's memory stays flat."""
    health = health_pb2_grpc.HealthStub(channel)
    rss_before = _rss_kib(gateway)
    for i in range(2000):
        replies = list(health.Watch(health_pb2.HealthCheckRequest(service=f"x{i}"), timeout=30))
        assert [r.status for r in replies] == [health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
    open_watches = [
        health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        for _ in range(MAX_WATCHERS)
    ]
    for watch in open_watches:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    extra = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        next(extra)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for watch in open_watches:
        watch.cancel()
    _serves(channel)
    # 2,000 names kept would be ~0.5 MiB; allow allocator noise, far below a leak per call.
    assert _rss_kib(gateway) - rss_before < 8 * 1024


def _rss_kib(stack: LocalStack) -> int:
    pid = stack.procs["gateway"].pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("%" * 4000, "once numbers and symbols are spelled out"),
        ("Hi. " * (MAX_SENTENCES + 50), "sentences; the limit per request"),
    ],
)
def test_text_past_a_work_limit_is_refused_naming_it(
    channel: grpc.Channel, text: str, limit: str
) -> None:
    stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Synthesize(pb.SynthesizeRequest(text=text), timeout=TOTAL_S + MARGIN_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert limit in (err.value.details() or "")


def test_request_budget_refuses_past_the_audio_and_sentence_limits() -> None:
    long = frontend_pb2.Sentence(num_frames=int(MAX_AUDIO_SECONDS * 100) + 1)
    with pytest.raises(InvalidArgument, match="audio would be longer"):
        RequestBudget(seconds_per_frame=0.01).charge(long)
    budget = RequestBudget(seconds_per_frame=0.01)
    for _ in range(MAX_SENTENCES):
        budget.charge(frontend_pb2.Sentence(num_frames=1))
    with pytest.raises(InvalidArgument, match="sentences"):
        budget.charge(frontend_pb2.Sentence(num_frames=1))


assert os.name == "posix"  # /proc is read for the gateway's memory
