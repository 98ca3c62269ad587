"""Faults that heal: a crashed stage is restarted and the gateway recovers without a restart;
unary stage calls ride out a restart by retrying; a GPU out-of-memory fails one batch, not
the service; a black-holed collector costs no request.

The stacks are real processes (LocalStack); the retry test's server is a stand-in of this
file's own, since what is under test is the gateway's channel, not a stage.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import torch
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc, vocoder_pb2

from services.cli.stack import LocalStack, wait_serving
from services.gateway.stages import RETRIED_METHODS, CancelScope, StageClients, channel_options
from services.runtime.config import SchedulerConfig
from services.runtime.errors import ResourceExhausted, Unavailable, grpc_status_for
from services.runtime.scheduler import BatchScheduler, Hints
from telemetry.otlp_receiver import OtlpReceiver

# Several sentences: the stream is still running when the vocoder is killed.
LONG_TEXT = " ".join(
    [
        "The vocoder is about to disappear in the middle of this stream.",
        "Every sentence after the first one should never arrive.",
        "The gateway must say which stage failed, and say it quickly.",
        "Then the supervisor brings the vocoder back on the same port.",
    ]
)
SHORT_TEXT = "The vocoder is back."


# ---------------------------------------------------------------------------------------------
# 1. A crashed stage is restarted; the gateway recovers by itself
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[LocalStack]:
    with LocalStack(tmp_path, supervise=True) as stack:
        yield stack


def test_killed_vocoder_fails_the_stream_fast_then_heals(supervised: LocalStack) -> None:
    stack = supervised
    gateway_pid = stack.procs["gateway"].pid
    victim = stack.procs["vocoder"]
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        stream = stub.SynthesizeStream(pb.SynthesizeRequest(text=LONG_TEXT), timeout=120)
        with pytest.raises(grpc.RpcError) as info:
            for i, _ in enumerate(stream):
                if i == 0:  # audio is flowing: now the vocoder dies
                    os.kill(victim.pid, signal.SIGKILL)
                    killed = time.monotonic()
        failed_after = time.monotonic() - killed
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert "vocoder" in info.value.details()
        assert failed_after < 1.0, failed_after

        # The supervisor restarts it (same port); the same gateway serves again.
        deadline = killed + 120
        while stack.procs["vocoder"] is victim:
            assert time.monotonic() < deadline, "the vocoder was not restarted"
            time.sleep(0.05)
        restarted = time.monotonic() - killed
        wait_serving(stack.address("vocoder"), 120)
        serving = time.monotonic() - killed
        attempts = 0
        while True:
            attempts += 1
            try:
                reply = stub.Synthesize(pb.SynthesizeRequest(text=SHORT_TEXT), timeout=60)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                assert time.monotonic() < deadline, "the gateway did not recover"
                time.sleep(0.1)
        recovered = time.monotonic() - killed
    assert reply.duration_seconds > 0
    assert stack.procs["gateway"].pid == gateway_pid
    assert stack.procs["gateway"].poll() is None
    assert stack.restarts == {"frontend": 0, "acoustic": 0, "vocoder": 1, "gateway": 0}
    assert "supervisor: vocoder exited with code -9" in stack.log_tail("vocoder", 200)
    # Stopping still stops everything: each service drains and exits 0, nothing respawns.
    assert stack.stop() == dict.fromkeys(("gateway", "frontend", "acoustic", "vocoder"), 0)
    time.sleep(0.5)
    assert stack.procs == {}
    print(
        f"\nvocoder kill -9: stream UNAVAILABLE after {failed_after * 1000:.0f} ms; "
        f"respawned after {restarted:.2f} s, SERVING after {serving:.2f} s, "
        f"first synthesis OK after {recovered:.2f} s ({attempts} attempt(s))"
    )


def test_crash_loop_backs_off_exponentially(tmp_path: Path) -> None:
    """A service that dies again right after each restart waits 0.5 s, 1 s, 2 s."""
    stack = LocalStack(tmp_path, supervise=True)
    stack.start(services=("frontend",))
    try:
        waits = []
        for _ in range(3):
            victim = stack.procs["frontend"]
            victim.kill()
            victim.wait(10)
            died = time.monotonic()
            while stack.procs["frontend"] is victim:
                time.sleep(0.01)
            waits.append(time.monotonic() - died)
        for waited, backoff in zip(waits, (0.5, 1.0, 2.0), strict=True):
            assert backoff - 0.05 <= waited < backoff + 0.5, waits  # + the supervisor's poll
        assert stack.restarts == {"frontend": 3}
    finally:
        stack.stop()
    print(f"\nrestart waits in a crash loop: {', '.join(f'{w:.2f} s' for w in waits)}")


def test_unsupervised_stack_leaves_a_dead_service_dead(tmp_path: Path) -> None:
    """Tests that start stacks without asking for supervision keep the old behaviour."""
    stack = LocalStack(tmp_path)
    stack.start(services=("frontend",))
    try:
        victim = stack.procs["frontend"]
        victim.kill()
        victim.wait(10)
        time.sleep(1.0)  # two restart backoffs' worth
        assert stack.procs["frontend"] is victim
    finally:
        stack.stop()


# ---------------------------------------------------------------------------------------------
# 2. Unary stage calls are retried on UNAVAILABLE, streams never
# ---------------------------------------------------------------------------------------------


def test_channel_options_carry_a_unary_only_retry_policy() -> None:
    options = dict(channel_options())
    assert options["grpc.enable_retries"] == 1
    (method_config,) = json.loads(options["grpc.service_config"])["methodConfig"]
    names = {(n["service"], n["method"]) for n in method_config["name"]}
    assert names == set(RETRIED_METHODS)
    assert not any(m.endswith("Stream") for _, m in names)
    policy = method_config["retryPolicy"]
    assert 3 <= policy["maxAttempts"] <= 4
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]


class _FlakyVocoder:
    """A stand-in vocoder server: its first `failures` Vocode attempts answer UNAVAILABLE
    (a stage restarting); VocodeStream always does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.unary_attempts = 0
        self.stream_attempts = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "Vocode": grpc.unary_unary_rpc_method_handler(
                self._vocode,
                request_deserializer=vocoder_pb2.VocodeRequest.FromString,
                response_serializer=vocoder_pb2.VocodeResponse.SerializeToString,
            ),
            "VocodeStream": grpc.stream_stream_rpc_method_handler(
                self._vocode_stream,
                request_deserializer=vocoder_pb2.VocodeRequest.FromString,
                response_serializer=vocoder_pb2.AudioChunk.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("voxline.v1.Vocoder", handlers),)
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def _vocode(
        self, request: vocoder_pb2.VocodeRequest, context: grpc.ServicerContext
    ) -> vocoder_pb2.VocodeResponse:
        self.unary_attempts += 1
        if self.unary_attempts <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return vocoder_pb2.VocodeResponse(sample_rate_hz=22050)

    def _vocode_stream(
        self, requests: Iterator[vocoder_pb2.VocodeRequest], context: grpc.ServicerContext
    ) -> Iterator[vocoder_pb2.AudioChunk]:
        self.stream_attempts += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        yield vocoder_pb2.AudioChunk()  # unreachable: makes this a generator


@pytest.fixture
def flaky_vocoder() -> Iterator[_FlakyVocoder]:
    server = _FlakyVocoder(failures=2)
    server.server.start()
    yield server
    server.server.stop(None)


def test_unary_stage_call_is_retried_on_unavailable(flaky_vocoder: _FlakyVocoder) -> None:
    clients = StageClients("127.0.0.1:1", "127.0.0.1:1", flaky_vocoder.address)
    try:
        t0 = time.monotonic()
        reply = clients.vocode(
            vocoder_pb2.VocodeRequest(request_id="r"), 10, Hints(), CancelScope()
        )
        elapsed = time.monotonic() - t0
        assert reply.sample_rate_hz == 22050
        assert flaky_vocoder.unary_attempts == 3  # two UNAVAILABLE, then the answer
        # Two backoffs of at most 0.1 s and 0.2 s (jittered): the retries cost little.
        assert elapsed < 1.0, elapsed
        with pytest.raises(Unavailable, match="vocoder"):
            list(clients.vocode_stream(iter([vocoder_pb2.VocodeRequest()]), 10, Hints()))
        assert flaky_vocoder.stream_attempts == 1  # a stream is never replayed
    finally:
        clients.close()
    print(f"\nVocode answered after 2 UNAVAILABLE attempts in {elapsed * 1000:.0f} ms")


# ---------------------------------------------------------------------------------------------
# 3. GPU out of memory fails that batch only
# ---------------------------------------------------------------------------------------------


class _OomOnce:
    """A model whose first batch runs out of GPU memory."""

    def __init__(self) -> None:
        self.calls = 0

    def execute(self, payloads: list[str]) -> list[str]:
        self.calls += 1
        if self.calls == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [p.upper() for p in payloads]


def test_out_of_memory_fails_the_batch_with_resource_exhausted_then_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emptied = []
    if not torch.cuda.is_available():  # record the call a GPU build would make
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    model = _OomOnce()
    # One request's three pieces in one batch (the CPU default takes one piece per request).
    config = SchedulerConfig(
        max_batch_size=4, max_batch_per_request=4, max_queue=8, max_queue_delay_s=0.2
    )
    scheduler: BatchScheduler[str, str] = BatchScheduler("acoustic", model.execute, config)
    scheduler.start()
    try:
        jobs = scheduler.submit_many(["a", "b", "c"], [None] * 3)
        for job in jobs:
            with pytest.raises(ResourceExhausted) as info:
                scheduler.wait_result(job)
            code, message = grpc_status_for(info.value)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert message == "acoustic ran out of GPU memory for a batch of 3; retry"
        assert model.calls == 1
        assert scheduler.run("d") == "D"  # the worker lives on
    finally:
        scheduler.stop()
    if emptied or not torch.cuda.is_available():
        assert emptied == [True]


def test_out_of_memory_outside_the_scheduler_is_resource_exhausted() -> None:
    code, message = grpc_status_for(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "GPU memory" in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_out_of_memory_is_survived() -> None:
    """On a GPU: a batch that really exhausts device memory fails alone; the cache is
    returned to the device and the next batch runs."""
    free, _ = torch.cuda.mem_get_info()
    held: list[torch.Tensor] = []

    def execute(sizes: list[int]) -> list[float]:
        x = torch.ones(sizes[0], dtype=torch.uint8, device="cuda")
        held.append(torch.ones(sizes[0], dtype=torch.uint8, device="cuda"))  # no room
        return [float(x[0])]

    config = SchedulerConfig(max_batch_size=1, max_queue=8)
    scheduler: BatchScheduler[int, float] = BatchScheduler("vocoder", execute, config)
    scheduler.start()
    try:
        with pytest.raises(ResourceExhausted, match="out of GPU memory for a batch of 1"):
            scheduler.run(int(free * 0.7))
        assert torch.cuda.memory_reserved() < free * 0.1  # the failed batch's block returned
        assert scheduler.run(1024) == 1.0
    finally:
        scheduler.stop()
        held.clear()


# ---------------------------------------------------------------------------------------------
# 4. A black-holed collector costs no request
# ---------------------------------------------------------------------------------------------


def _timed_syntheses(stack: LocalStack, n: int) -> list[float]:
    """Seconds per synthesis, alternating unary and streaming; each must succeed."""
    latencies = []
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        for i in range(n):
            request = pb.SynthesizeRequest(text=f"Request {i} while the collector is silent.")
            t0 = time.monotonic()
            if i % 2:
                assert len(list(stub.SynthesizeStream(request, timeout=60))) > 0
            else:
                assert stub.Synthesize(request, timeout=60).duration_seconds > 0
            latencies.append(time.monotonic() - t0)
    return latencies


def test_black_holed_collector_costs_no_request(tmp_path: Path) -> None:
    """The collector accepts connections and never answers (each export hangs for its whole
    timeout): every request still succeeds, no slower than with a healthy collector."""
    env = {
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # Longer than any request may take: one that waited on an export would show it.
        "OTEL_EXPORTER_OTLP_TIMEOUT": "30",
    }
    with OtlpReceiver(http=False) as healthy, OtlpReceiver(http=False, delay_s=60) as hung:
        with LocalStack(
            tmp_path / "healthy", env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": healthy.endpoint}
        ) as stack:
            _timed_syntheses(stack, 1)  # warm-up
            baseline = _timed_syntheses(stack, 6)
        with LocalStack(
            tmp_path / "hung", env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": hung.endpoint}
        ) as stack:
            _timed_syntheses(stack, 1)  # warm-up
            time.sleep(1.0)  # a few export intervals: every exporter is stuck from here on
            latencies = _timed_syntheses(stack, 10)
            t0 = time.monotonic()
        stopped_after = time.monotonic() - t0
    base, black = statistics.median(baseline), statistics.median(latencies)
    print(
        f"\nblack-holed collector: 10/10 OK, median {black:.2f} s, max {max(latencies):.2f} s "
        f"(healthy collector: median {base:.2f} s); stack stopped in {stopped_after:.1f} s"
    )
    assert max(latencies) < 10.0  # a third of the export timeout: nothing waited for one
    assert black < base * 1.5 + 0.5  # loose: two cores shared by four services and pytest
