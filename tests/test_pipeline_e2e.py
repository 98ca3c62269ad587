"""End to end through four real gRPC services: unary, streaming, formats, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_wav
from voxline.v1 import synthesizer_pb2 as pb

from services.cli.client import synthesize
from services.cli.stack import LocalStack

TEXT = "The quick brown fox jumps over the lazy dog. It costs $3.50, said Dr. Smith."


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def test_unary_returns_valid_wav_of_plausible_length(synthesizer) -> None:
    reply = synthesizer.Synthesize(pb.SynthesizeRequest(text=TEXT, request_id="r-1"), timeout=60)
    channels, width, rate, frames = read_wav(reply.audio)
    assert (channels, width, rate) == (1, 2, 22050)
    assert reply.sample_rate_hz == 22050 and reply.request_id == "r-1"
    seconds = len(frames) / 2 / 22050
    assert reply.duration_seconds == pytest.approx(seconds)
    # ~17 words plus "three dollars and fifty cents": normal speech is 2-4 words/s.
    assert 3.0 < seconds < 15.0
    audio = _samples(frames)
    assert np.abs(audio).max() > 100  # not silence


def test_longer_text_gives_longer_audio(synthesizer) -> None:
    short = synthesizer.Synthesize(pb.SynthesizeRequest(text="Hello there."), timeout=60)
    long = synthesizer.Synthesize(
        pb.SynthesizeRequest(text="Hello there, my friend. " * 3), timeout=60
    )
    assert long.duration_seconds > 3 * short.duration_seconds


def test_stream_first_message_carries_rate_and_matches_unary(synthesizer) -> None:
    request = pb.SynthesizeRequest(text=TEXT)
    messages = list(synthesizer.SynthesizeStream(request, timeout=60))
    assert len(messages) > 2, "audio should arrive in several chunks"
    assert messages[0].sample_rate_hz == 22050
    assert messages[0].encoding == pb.AUDIO_ENCODING_LINEAR16
    assert [m.sentence_index for m in messages] == sorted(m.sentence_index for m in messages)
    assert messages[-1].sentence_index == 1  # two sentences
    streamed = _samples(b"".join(m.audio for m in messages))
    unary = _samples(read_wav(synthesizer.Synthesize(request, timeout=60).audio)[3])
    assert len(streamed) == len(unary)
    noise = streamed - unary
    snr_db = 10 * np.log10(np.sum(unary**2) / max(np.sum(noise**2), 1e-9))
    assert snr_db > 20, f"stream differs from unary: SNR {snr_db:.1f} dB"


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_output_sample_rates(stack: LocalStack, rate: int) -> None:
    unary = synthesize(stack.gateway, "Resampled audio.", sample_rate=rate)
    streamed = synthesize(stack.gateway, "Resampled audio.", sample_rate=rate, stream=True)
    native = synthesize(stack.gateway, "Resampled audio.")
    assert unary.sample_rate == streamed.sample_rate == rate
    assert unary.duration_s == pytest.approx(native.duration_s, abs=0.01)
    assert streamed.duration_s == pytest.approx(native.duration_s, abs=0.01)


def test_speaking_rate_changes_duration(stack: LocalStack) -> None:
    normal = synthesize(stack.gateway, TEXT)
    fast = synthesize(stack.gateway, TEXT, speaking_rate=2.0)
    assert fast.duration_s < 0.7 * normal.duration_s


def test_list_voices_reports_the_trained_voice(synthesizer) -> None:
    reply = synthesizer.ListVoices(pb.ListVoicesRequest(), timeout=10)
    assert reply.default_voice in [v.name for v in reply.voices]
    voice = reply.voices[0]
    assert voice.native_sample_rate_hz == 22050
    assert 16000 in voice.supported_sample_rates_hz
    assert voice.trained, "the shipped voice weights should load by default"
    assert "UNTRAINED" not in voice.description


def test_checkpoint_none_is_reported_untrained(tmp_path) -> None:
    """`--checkpoint none` runs the seeded initialisation, and says so plainly."""
    import subprocess
    import sys

    import grpc
    from voxline.v1 import stage_pb2, stage_pb2_grpc

    from services.cli.stack import free_port, wait_serving

    port = free_port()
    cmd = [sys.executable, "-m", "services.acoustic", "--port", str(port), "--checkpoint", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(f"127.0.0.1:{port}", 60, proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            info = stage_pb2_grpc.StageInfoStub(channel).GetModelInfo(
                stage_pb2.GetModelInfoRequest(), timeout=10
            )
        assert not info.trained and info.weights_source.startswith("seeded-init:")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "UNTRAINED" in err


def test_default_voice_by_name(synthesizer) -> None:
    name = synthesizer.ListVoices(pb.ListVoicesRequest(), timeout=10).default_voice
    reply = synthesizer.Synthesize(
        pb.SynthesizeRequest(text="Named voice.", voice=name), timeout=60
    )
    assert reply.duration_seconds > 0.3


def test_reflection_lists_every_service(stack: LocalStack) -> None:
    """What `grpcurl list` sees, via the reflection client."""
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    expected = {
        "gateway": "voxline.v1.Synthesizer",
        "frontend": "voxline.v1.TextFrontend",
        "acoustic": "voxline.v1.AcousticModel",
        "vocoder": "voxline.v1.Vocoder",
    }
    for service, name in expected.items():
        with grpc.insecure_channel(stack.address(service)) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert name in services and "grpc.health.v1.Health" in services, service
        if service != "gateway":
            assert "voxline.v1.StageInfo" in services


def test_cli_say_and_voices(stack: LocalStack, tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "hello.wav"
    cli = [sys.executable, "-m", "services.cli.main"]
    said = subprocess.run(
        [*cli, "say", "Hello from the CLI.", "-o", str(out), "--stream", "--server", stack.gateway,
         "--sample-rate", "16000"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert said.returncode == 0, said.stderr
    assert "TTFA" in said.stdout and "RTF" in said.stdout
    channels, width, rate, frames = read_wav(out.read_bytes())
    assert (channels, width, rate) == (1, 2, 16000) and len(frames) > 16000
    voices = subprocess.run(
        [*cli, "voices", "--server", stack.gateway], capture_output=True, text=True, timeout=60
    )
    assert voices.returncode == 0 and "voxline-en-us (default)" in voices.stdout
    bad = subprocess.run(
        [*cli, "say", "", "-o", str(tmp_path / "x.wav"), "--server", stack.gateway],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr


def test_frontend_stream_sends_the_same_sentences_as_analyze(stack: LocalStack) -> None:
    """AnalyzeStream (what the streaming gateway uses) = Analyze, sentence by sentence."""
    import grpc
    from voxline.v1 import frontend_pb2, frontend_pb2_grpc

    from services.runtime.tensors import from_proto

    request = frontend_pb2.AnalyzeRequest(text=TEXT + " And one more, at 1.2 times.")
    with grpc.insecure_channel(stack.address("frontend")) as channel:
        stub = frontend_pb2_grpc.TextFrontendStub(channel)
        whole = stub.Analyze(request, timeout=30).sentences
        streamed = list(stub.AnalyzeStream(request, timeout=30))
        with pytest.raises(grpc.RpcError) as bad:
            list(stub.AnalyzeStream(frontend_pb2.AnalyzeRequest(text=" \t "), timeout=30))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [s.index for s in streamed] == [s.index for s in whole] == [0, 1, 2]
    for a, b in zip(whole, streamed, strict=True):
        assert a.num_frames == b.num_frames and a.num_chars == b.num_chars
        for field in ("phoneme_ids", "durations"):
            ta, tb = (from_proto(getattr(s, field), name=field) for s in (a, b))
            assert np.array_equal(ta.numpy(), tb.numpy()), field
        fa, fb = (from_proto(s.features, name="features") for s in (a, b))
        assert np.allclose(fa.numpy(), fb.numpy(), atol=1e-4)
