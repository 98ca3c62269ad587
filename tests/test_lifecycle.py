"""Health transitions, graceful SIGTERM drain, checkpoint errors — on real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from conftest import SLOW_VOCODER
from grpc_health.v1 import health_pb2, health_pb2_grpc
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.acoustic.model import AcousticModel, AcousticModelConfig
from services.cli.stack import LocalStack, free_port
from services.runtime.checkpoint import CheckpointError, load_checked, read_state_dict

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _watch_health(address: str, service: str, until: float) -> list[int]:
    """Poll health quickly and return the distinct statuses seen, in order."""
    seen: list[int] = []
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until:
            try:
                status = stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                ).status
            except grpc.RpcError:
                status = -1  # not listening yet
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == SERVING:
                break
            time.sleep(0.02)
    return seen


def test_health_not_serving_until_model_warm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.vocoder", "--port", str(port), "--torch-threads", "1",
         *SLOW_VOCODER],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        seen = _watch_health(f"127.0.0.1:{port}", "voxline.v1.Vocoder", time.monotonic() + 120)
        seen = [s for s in seen if s != -1]
        assert seen == [NOT_SERVING, SERVING], seen
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_model_calls_refused_while_loading(tmp_path: Path) -> None:
    """While NOT_SERVING, model RPCs get UNAVAILABLE (retryable), never a hang."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.vocoder", "--port", str(port), "--torch-threads", "1",
         *SLOW_VOCODER],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    from voxline.v1 import vocoder_pb2, vocoder_pb2_grpc

    from services.runtime.tensors import to_proto

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = vocoder_pb2_grpc.VocoderStub(channel)
            request = vocoder_pb2.VocodeRequest(mel=to_proto(torch.full((80, 10), -5.0)))
            with pytest.raises(grpc.RpcError) as info:
                stub.Vocode(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading" in info.value.details()
    finally:
        proc.kill()
        proc.wait()


def _draining(service: str) -> dict[str, list[str]]:
    """Stack flags: `service` drains for 90 s (on a loaded 2-core CI machine a stream takes
    seconds), and HiFi-GAN keeps the stage calls in flight long enough for a signal to land
    mid-call."""
    extra = {"vocoder": [*SLOW_VOCODER]}
    extra[service] = [*extra.get(service, []), "--drain-seconds", "90"]
    return extra


def _sigterm_mid_stream(stack: LocalStack, service: str, text: str) -> None:
    """Stream `text`; once its first audio arrives, SIGTERM `service`. The stream must still
    carry all its audio and the service exit 0."""
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        expected = stub.Synthesize(pb.SynthesizeRequest(text=text), timeout=120)
        stream = stub.SynthesizeStream(pb.SynthesizeRequest(text=text), timeout=120)
        first = next(stream)
        stack.procs[service].send_signal(signal.SIGTERM)
        got = len(first.audio) + sum(len(m.audio) for m in stream)
    # The WAV header is 44 bytes; the PCM must be complete.
    assert got == len(expected.audio) - 44
    assert stack.procs[service].wait(30) == 0


def test_sigterm_drains_in_flight_stream(tmp_path: Path) -> None:
    """SIGTERM to the gateway mid-stream: the stream still completes; the process exits 0."""
    text = "This stream must finish. The gateway was told to stop, but it drains first."
    with LocalStack(tmp_path, extra_args=_draining("gateway")) as stack:
        _sigterm_mid_stream(stack, "gateway", text)
        # Refused after the drain: nothing is listening any more.
        with grpc.insecure_channel(stack.gateway) as channel:
            stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Synthesize(pb.SynthesizeRequest(text="too late"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_drains_in_flight_stage_call(tmp_path: Path) -> None:
    """SIGTERM to the vocoder while it serves a stream: that stream completes, exit 0."""
    # One sentence = one VocodeStream call, in flight once the first audio arrives.
    text = "One long sentence for the vocoder to work on while it is being asked to stop"
    with LocalStack(tmp_path, extra_args=_draining("vocoder")) as stack:
        _sigterm_mid_stream(stack, "vocoder", text)


def test_checkpoint_shape_mismatch_is_clear(tmp_path: Path) -> None:
    small = AcousticModel(AcousticModelConfig(d_model=64))
    path = tmp_path / "acoustic.pt"
    torch.save(small.state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checked(AcousticModel(), read_state_dict(path), str(path))
    message = str(info.value)
    assert "shape mismatch" in message and "decoder.blocks.0.conv.weight" in message
    assert "checkpoint [64, 64, 5] vs model [192, 192, 5]" in message


def test_checkpoint_roundtrip_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = AcousticModel()
    model.reset_parameters(7)
    path = tmp_path / "acoustic.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    other = AcousticModel()
    load_checked(other, read_state_dict(path), str(path))
    w = model.decoder.proj.weight
    assert torch.allclose(other.decoder.proj.weight, w.half().float())


def test_service_with_bad_checkpoint_exits_with_message(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pt"
    torch.save({"decoder.proj.weight": torch.zeros(3, 3)}, path)
    proc = subprocess.run(
        [sys.executable, "-m", "services.acoustic", "--port", "0", "--checkpoint", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "does not fit the model" in proc.stderr and "missing keys" in proc.stderr


def test_max_connection_age_does_not_cut_streams_in_flight(tmp_path: Path) -> None:
    """Connections age out (so clients re-resolve DNS when pods scale), but a stream in flight
    when that happens finishes, and the next call reconnects transparently."""
    from voxline.v1 import vocoder_pb2, vocoder_pb2_grpc

    from services.runtime.tensors import to_proto

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.vocoder", "--port", str(port),
         "--max-connection-age-s", "1", "--drain-seconds", "1", "--torch-threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def slow_mel() -> Iterator[vocoder_pb2.VocodeRequest]:
        for _ in range(8):  # fed over ~3 s, well past the 1 s connection age
            time.sleep(0.4)
            yield vocoder_pb2.VocodeRequest(mel=to_proto(torch.full((80, 8), -5.0)))

    try:
        from services.cli.stack import wait_serving

        wait_serving(f"127.0.0.1:{port}", 120, proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = vocoder_pb2_grpc.VocoderStub(channel)
            for _ in range(2):
                chunks = list(stub.VocodeStream(slow_mel(), timeout=120))
                assert sum(c.audio.shape[0] for c in chunks) == 64 * 256
    finally:
        proc.terminate()
        proc.wait(30)
