"""Bad input gets a precise status and a human message; the services keep serving."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from conftest import SLOW_VOCODER
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.stack import LocalStack, free_port, wait_serving

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _req(**kw: object) -> pb.SynthesizeRequest:
    kw.setdefault("text", "Hello.")
    return pb.SynthesizeRequest(**kw)  # type: ignore[arg-type]


CASES = [
    ("empty", _req(text=""), "empty"),
    ("whitespace", _req(text="  \n\t "), "empty"),
    ("control chars only", _req(text="\x00\x01\x07\x1b"), "speakable"),
    ("too long", _req(text="word " * 1001), "limit"),
    ("unknown voice", _req(voice="no-such-voice"), "unknown voice"),
    ("zero rate", _req(speaking_rate=0.0), "speaking_rate"),
    ("negative rate", _req(speaking_rate=-1.0), "speaking_rate"),
    ("nan rate", _req(speaking_rate=float("nan")), "speaking_rate"),
    ("absurd rate", _req(speaking_rate=50.0), "speaking_rate"),
    ("bad sample rate", _req(sample_rate_hz=12345), "sample_rate_hz"),
    ("negative sample rate", _req(sample_rate_hz=-8000), "sample_rate_hz"),
    ("bad encoding", _req(encoding=7), "encoding"),
    ("unknown priority", _req(priority=9), "priority"),
    ("long request id", _req(request_id="x" * 129), "request_id"),
    ("request id with spaces", _req(request_id="my request"), "request_id"),
    ("request id with newline", _req(request_id="id\nforged log line"), "request_id"),
]


@pytest.mark.parametrize(("name", "request_", "needle"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("method", ["unary", "stream"])
def test_invalid_argument(synthesizer, name: str, request_, needle: str, method: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        if method == "unary":
            synthesizer.Synthesize(request_, timeout=30)
        else:
            list(synthesizer.SynthesizeStream(request_, timeout=30))
    assert info.value.code() == INVALID, info.value.details()
    assert needle in info.value.details()


def test_still_serving_after_bad_input(synthesizer) -> None:
    for _, request_, _ in CASES:
        with pytest.raises(grpc.RpcError):
            synthesizer.Synthesize(request_, timeout=30)
    assert synthesizer.Synthesize(_req(text="Still here."), timeout=60).duration_seconds > 0.2


def test_punctuation_only_is_rejected(synthesizer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        synthesizer.Synthesize(_req(text="?!... ---"), timeout=30)
    assert info.value.code() == INVALID


def test_deadline_exceeded(synthesizer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        synthesizer.Synthesize(_req(text="A long sentence. " * 40), timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_unavailable_stage_is_named(stack: LocalStack, tmp_path) -> None:
    """A gateway whose acoustic stage is down answers UNAVAILABLE naming it, without hanging."""
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    gateway = subprocess.Popen(
        [sys.executable, "-m", "services.gateway", "--port", str(port),
         "--frontend-address", stack.address("frontend"), "--acoustic-address", dead,
         "--vocoder-address", stack.address("vocoder")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_serving(f"127.0.0.1:{port}", 60, gateway)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
            for call in (
                stub.Synthesize,
                lambda r, timeout: list(stub.SynthesizeStream(r, timeout=timeout)),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call(_req(text="Is anybody there?"), timeout=20)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "acoustic" in info.value.details()
    finally:
        gateway.terminate()
        gateway.wait(30)


def test_overload_is_resource_exhausted(tmp_path) -> None:
    """More waiters than --max-queue: RESOURCE_EXHAUSTED naming the stage; others succeed."""
    import threading

    import torch
    from voxline.v1 import vocoder_pb2, vocoder_pb2_grpc

    from services.runtime.tensors import to_proto

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.vocoder", "--port", str(port), "--max-queue", "1",
         "--torch-threads", "1", *SLOW_VOCODER],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_serving(f"127.0.0.1:{port}", 120, proc)
        request = vocoder_pb2.VocodeRequest(mel=to_proto(torch.full((80, 200), -5.0)))
        codes: list[grpc.StatusCode] = []
        details: list[str] = []

        def call() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    vocoder_pb2_grpc.VocoderStub(channel).Vocode(request, timeout=120)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
                    details.append(exc.details())

        threads = [threading.Thread(target=call) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        # One runs, one waits, the rest are turned away at once.
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 2, codes
        assert codes.count(grpc.StatusCode.OK) >= 2, codes
        assert all("vocoder queue is full" in d for d in details), details
    finally:
        proc.terminate()
        proc.wait(30)


def _raw_request(text: bytes, request_id: bytes = b"") -> bytes:
    """A SynthesizeRequest's wire bytes with arbitrary (possibly invalid UTF-8) field bytes:
    field 1 (text) and 6 (request_id), length-delimited."""

    def field(number: int, value: bytes) -> bytes:
        assert len(value) < 128
        return bytes([number << 3 | 2, len(value)]) + value

    return field(1, text) + (field(6, request_id) if request_id else b"")


@pytest.mark.parametrize(
    "payload",
    [
        _raw_request(b"Hello \xff\xfe world."),
        _raw_request(b"Fine text.", request_id=b"\xc3\x28"),
        _raw_request(b"Truncated")[:-3],
        b"\xff\xff\xff\xff",
    ],
    ids=["bad utf-8 text", "bad utf-8 request id", "truncated", "garbage"],
)
@pytest.mark.parametrize("method", ["Synthesize", "SynthesizeStream"])
def test_undecodable_request_is_invalid_argument(
    stack: LocalStack, synthesizer, payload: bytes, method: str
) -> None:
    """Bytes protobuf refuses get INVALID_ARGUMENT, not INTERNAL, and no ERROR traceback."""
    with grpc.insecure_channel(stack.gateway) as channel:
        path = f"/voxline.v1.Synthesizer/{method}"
        if method == "Synthesize":
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            invoke = lambda: call(payload, timeout=30)  # noqa: E731
        else:
            stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            invoke = lambda: list(stream(payload, timeout=30))  # noqa: E731
        with pytest.raises(grpc.RpcError) as info:
            invoke()
    assert info.value.code() == INVALID, info.value.details()
    assert "could not be decoded" in info.value.details()
    log = (stack.run_dir / "gateway.log").read_text()
    assert "Exception deserializing" not in log and "Traceback" not in log
    assert synthesizer.Synthesize(_req(text="Still here."), timeout=60).duration_seconds > 0.2


def test_undecodable_message_in_a_stage_request_stream(stack: LocalStack) -> None:
    """A request stream (the vocoder's VocodeStream) with an undecodable message:
    INVALID_ARGUMENT, the stage keeps serving."""
    from voxline.v1 import vocoder_pb2

    bad = bytes([0x12, 2]) + b"\xc3\x28"  # field 2 (voice) with invalid UTF-8
    assert vocoder_pb2.VocodeRequest.DESCRIPTOR.fields_by_number[2].name == "voice"
    with grpc.insecure_channel(stack.address("vocoder")) as channel:
        call = channel.stream_stream(
            "/voxline.v1.Vocoder/VocodeStream", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter([bad]), timeout=30))
    assert info.value.code() == INVALID, info.value.details()
    assert "VocodeStream request could not be decoded" in info.value.details()
    assert "Traceback" not in (stack.run_dir / "vocoder.log").read_text()


def test_gateway_receive_limit_fits_its_api(stack: LocalStack, synthesizer) -> None:
    """The public gateway receives the text limit plus headroom, not the stages' 64 MiB."""
    from services.gateway.validation import max_request_bytes

    limit = max_request_bytes(5000)
    assert limit < 64 * 1024
    with pytest.raises(grpc.RpcError) as info:
        synthesizer.Synthesize(_req(text="a" * (limit + 1)), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    # The largest valid request still fits: 5,000 four-byte characters.
    with pytest.raises(grpc.RpcError) as info:
        synthesizer.Synthesize(_req(text="\U0001f600" * 5000), timeout=30)
    assert info.value.code() == INVALID  # nothing speakable, but it was received and read
