"""A unary answer over the gRPC message limit is refused before the work, with a message
pointing to streaming; its size is known exactly from the frontend's plan; an answer the
caller does not take is logged as an error, never as "synthesized"."""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any

import grpc
import numpy as np
import pytest
import soxr
from conftest import running_service
from voxline.v1 import frontend_pb2, synthesizer_pb2_grpc
from voxline.v1 import synthesizer_pb2 as pb

from services.cli.stack import LocalStack
from services.gateway.audio import SUPPORTED_SAMPLE_RATES, resample
from services.gateway.pipeline import Job, Pipeline
from services.gateway.unary import (
    DEFAULT_MAX_UNARY_BYTES,
    UnaryAnswer,
    output_samples,
    size_text,
)
from services.runtime.errors import InvalidArgument
from services.runtime.wav import wav_bytes

#: ~1,900 characters: at 48 kHz far more than 4 MiB of audio (the issue: 1,100 already were).
LONG_TEXT = " ".join(
    f"Sentence number {n} of a long text read aloud, to make a large answer." for n in range(27)
)
TEXT = "Exactly this long, and not a byte more."


# -- the size, in-process ----------------------------------------------------------------------


def test_output_samples_is_what_the_resampler_makes() -> None:
    rng = random.Random(7)
    for _ in range(300):
        native = rng.choice(SUPPORTED_SAMPLE_RATES)
        rate = rng.choice(SUPPORTED_SAMPLE_RATES)
        n = rng.randint(0, 200_000)
        made = len(resample(np.zeros(n, dtype=np.int16), native, rate))
        assert output_samples(n, native, rate) == made, (native, rate, n)
    # soxr's half-sample cases (16 kHz -> 8 kHz of an odd count) included:
    assert output_samples(3173, 16000, 8000) == len(soxr.resample(np.zeros(3173), 16000, 8000))


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
@pytest.mark.parametrize("request_id", ["r", "x" * 128])
def test_message_bytes_is_the_serialized_size(rate: int, request_id: str) -> None:
    """What the servicer would send for `frames` frames, byte for byte."""
    answer = UnaryAnswer(22050, 256, rate, request_id)
    for frames in (0, 1, 37, 1000, 9001):
        pcm = resample(np.zeros(frames * 256, dtype=np.int16), 22050, rate)
        response = pb.SynthesizeResponse(
            audio=wav_bytes(pcm, rate),
            sample_rate_hz=rate,
            duration_seconds=len(pcm) / rate,
            encoding=pb.AUDIO_ENCODING_LINEAR16,
            request_id=request_id,
        )
        assert answer.message_bytes(frames) == response.ByteSize(), frames


def test_check_refuses_only_above_the_limit() -> None:
    answer = UnaryAnswer(22050, 256, 48000, "id")
    frames = 5000
    size = answer.message_bytes(frames)
    answer.check(frames, size)  # exactly at the limit: sent (gRPC refuses only "larger")
    with pytest.raises(InvalidArgument) as info:
        answer.check(frames, size - 1)
    assert "SynthesizeStream" in str(info.value) and f"{size:,} bytes" in str(info.value)
    assert size_text(DEFAULT_MAX_UNARY_BYTES) == "4 MiB (4,194,304 bytes)"


class _PlanOnlyClients:
    """Stage clients whose frontend plans `frames` per sentence; any other call fails."""

    def __init__(self, frames: list[int]) -> None:
        self.frames = frames
        self.calls: list[str] = []

    def analyze(self, request: Any, timeout: float, hints: Any, scope: Any) -> Any:
        self.calls.append("analyze")
        return frontend_pb2.AnalyzeResponse(
            sentences=[
                frontend_pb2.Sentence(index=i, num_frames=n) for i, n in enumerate(self.frames)
            ]
        )

    def generate(self, *args: Any) -> Any:
        self.calls.append("generate")
        raise AssertionError("the acoustic stage ran for an answer that is refused")

    def vocode(self, *args: Any) -> Any:
        self.calls.append("vocode")
        raise AssertionError("the vocoder ran for an answer that is refused")


def test_refused_after_the_frontend_before_any_other_stage() -> None:
    # 20 sentences of 400 frames: 8000 frames x 256 at 48 kHz = 8.9 MB.
    clients = _PlanOnlyClients([400] * 20)
    pipeline = Pipeline(clients)  # type: ignore[arg-type]
    job = Job(
        text="t", voice="v", speaking_rate=1.0, request_id="id", deadline=time.monotonic() + 60
    )
    answer = UnaryAnswer(22050, 256, 48000, "id")
    with pytest.raises(InvalidArgument) as info:
        list(pipeline.synthesize(job, answer))
    assert clients.calls == ["analyze"]
    message = str(info.value)
    assert "over the 4 MiB (4,194,304 bytes) limit of a unary answer" in message
    assert "SynthesizeStream" in message
    # The same plan at 8 kHz fits: the stages are called.
    with pytest.raises(AssertionError, match="acoustic"):
        list(pipeline.synthesize(job, UnaryAnswer(22050, 256, 8000, "id")))


# -- the real stack ----------------------------------------------------------------------------


def _log_records(stack: LocalStack, request_id: str) -> list[dict[str, Any]]:
    records = []
    for line in (stack.run_dir / "gateway.log").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("request_id") == request_id:
            records.append(record)
    return records


def _wait_for_span(stack: LocalStack, trace_id: str, name: str) -> dict[str, Any]:
    """The span `name` of trace `trace_id`, with ERROR status, once the gateway exported it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in stack.run_dir.glob("gateway.traces.jsonl"):
            for line in path.read_text().splitlines():
                for rs in json.loads(line)["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        for span in ss["spans"]:
                            if span["traceId"] == trace_id and span["name"] == name:
                                assert span["status"].get("code") == 2  # ERROR
                                return span
        time.sleep(0.5)
    raise AssertionError(f"no {name} span in trace {trace_id}")


def _wait_for_log(stack: LocalStack, request_id: str, message: str) -> list[dict[str, Any]]:
    """The gateway's log records of `request_id` once one starts with `message` (the unary
    outcome is logged when the call has ended, after the client has its answer)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = _log_records(stack, request_id)
        if any(r.get("message", "").startswith(message) for r in records):
            return records
        time.sleep(0.2)
    raise AssertionError(f"no {message!r} for {request_id}: {_log_records(stack, request_id)}")


def test_oversized_unary_is_refused_with_a_pointer_to_streaming(
    stack: LocalStack, synthesizer: synthesizer_pb2_grpc.SynthesizerStub
) -> None:
    request_id = "big-" + uuid.uuid4().hex
    request = pb.SynthesizeRequest(text=LONG_TEXT, sample_rate_hz=48000, request_id=request_id)
    with pytest.raises(grpc.RpcError) as info:
        synthesizer.Synthesize(request, timeout=120)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert "over the 4 MiB (4,194,304 bytes) limit of a unary answer" in details, details
    assert "SynthesizeStream" in details
    # An error in the gateway's log (written before the status went out), never "synthesized".
    log = (stack.run_dir / "gateway.log").read_text(errors="replace")
    assert f"Synthesize -> INVALID_ARGUMENT: {details}" in log
    assert not [r for r in _log_records(stack, request_id) if r.get("message") == "synthesized"]


def test_the_limit_is_exact(
    stack: LocalStack, synthesizer: synthesizer_pb2_grpc.SynthesizerStub
) -> None:
    """A gateway whose --max-unary-bytes is exactly one answer's size sends that answer and
    refuses the same one a byte larger (a request id one character longer)."""
    short, long_ = "a" * 20, "a" * 21
    sizes = {}
    for rate in (48000, 0):  # resampled, and the voice's native rate
        request = pb.SynthesizeRequest(text=TEXT, sample_rate_hz=rate, request_id=short)
        sizes[rate] = synthesizer.Synthesize(request, timeout=60).ByteSize()
    frontend, acoustic, vocoder = (stack.address(s) for s in ("frontend", "acoustic", "vocoder"))
    for rate, size in sizes.items():
        args = ["--frontend-address", frontend, "--acoustic-address", acoustic]
        args += ["--vocoder-address", vocoder, "--max-unary-bytes", str(size)]
        with running_service("gateway", *args) as address, grpc.insecure_channel(address) as ch:
            stub = synthesizer_pb2_grpc.SynthesizerStub(ch)
            fits = pb.SynthesizeRequest(text=TEXT, sample_rate_hz=rate, request_id=short)
            assert stub.Synthesize(fits, timeout=60).ByteSize() == size
            over = pb.SynthesizeRequest(text=TEXT, sample_rate_hz=rate, request_id=long_)
            with pytest.raises(grpc.RpcError) as info:
                stub.Synthesize(over, timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"would be {size_text(size + 1)}, over the {size_text(size)}" in (
                info.value.details()
            )


def test_an_answer_the_caller_refuses_is_not_logged_as_synthesized(stack: LocalStack) -> None:
    """A client whose receive limit is below the answer: gRPC refuses it client-side after
    the work; the gateway logs an error for it, not "synthesized"."""
    options = [
        ("grpc.max_receive_message_length", 16 * 1024),
        # A fixed 64 KiB window: the answer cannot be all in flight before it is refused.
        ("grpc.http2.bdp_probe", 0),
    ]
    request_id = "refused-" + uuid.uuid4().hex
    text = (
        "This answer is far larger than the sixteen kibibytes the client accepts. "
        "At forty-eight kilohertz, every second of speech takes ninety-six kilobytes."
    )
    request = pb.SynthesizeRequest(text=text, sample_rate_hz=48000, request_id=request_id)
    with grpc.insecure_channel(stack.gateway, options=options) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Synthesize(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    records = _wait_for_log(stack, request_id, "unary answer not delivered")
    (refused,) = [r for r in records if r["message"].startswith("unary answer not delivered")]
    assert refused["level"] == "ERROR" and refused["answer_bytes"] > 200_000
    assert not [r for r in records if r.get("message") == "synthesized"]
    # ...and an ERROR span in the request's trace (the metric is counted beside it).
    assert _wait_for_span(stack, refused["trace_id"], "voxline.synthesis.undelivered")

    # A caller that takes its answer: "synthesized", logged once the call has ended.
    delivered_id = "taken-" + uuid.uuid4().hex
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        request = pb.SynthesizeRequest(text=text, sample_rate_hz=48000, request_id=delivered_id)
        stub.Synthesize(request, timeout=60)
    records = _wait_for_log(stack, delivered_id, "synthesized")
    assert [r["level"] for r in records if r["message"] == "synthesized"] == ["INFO"]
