"""Stopping the local stack (services/cli/stack.py, `voxline serve`): front door first, so
requests in flight finish; a terminal's Ctrl-C (SIGINT to the whole process group) stops the
stack, never a restart."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.stack import STAGES, LocalStack

# Several sentences: the gateway calls the stages again for each one, so the stream is still
# running, and still needs every stage, well after its first audio.
LONG_TEXT = " ".join(
    [
        "This stream was in flight when the stack was told to stop.",
        "The gateway drains first, so every sentence still reaches the stages.",
        "Only once the gateway has gone are the stages asked to stop.",
        "Had they been stopped together, this sentence would never have arrived.",
        "Nor would this one, the last of a long answer, have been heard at all.",
    ]
)


def _events(run_dir: Path, service: str) -> list[tuple[float, str]]:
    """(time, message) of a service's JSON log lines, in order."""
    out = []
    for line in (run_dir / f"{service}.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            moment = dt.datetime.fromisoformat(record["time"]).timestamp()
            out.append((moment, record["message"]))
    return out


def _when(run_dir: Path, service: str, message: str) -> float:
    (moment,) = [t for t, m in _events(run_dir, service) if m == message]
    return moment


def _assert_stopped_in_order(run_dir: Path, front: tuple[str, ...] = ("gateway",)) -> None:
    """Every service drained once, on SIGTERM (never SIGINT), each stage only after the
    gateway had drained; no supervisor restart."""
    gateway_done = _when(run_dir, "gateway", "drained")
    for stage in STAGES:
        assert _when(run_dir, stage, "received SIGTERM; draining") >= gateway_done, stage
    for service in (*front, *STAGES):
        text = (run_dir / f"{service}.log").read_text(errors="replace")
        assert "SIGINT" not in text, service
        assert "--- supervisor:" not in text, service


def test_stop_lets_a_stream_in_flight_finish(tmp_path: Path) -> None:
    """stop() while a several-sentence stream is running: the stream carries all its audio
    (the gateway drains with the stages still up), then every service exits 0."""
    with LocalStack(tmp_path, supervise=True) as stack:
        with grpc.insecure_channel(stack.gateway) as channel:
            stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
            expected = stub.Synthesize(pb.SynthesizeRequest(text=LONG_TEXT), timeout=120)
            stream = stub.SynthesizeStream(pb.SynthesizeRequest(text=LONG_TEXT), timeout=120)
            first = next(stream)
            codes: dict[str, int | None] = {}
            stopper = threading.Thread(target=lambda: codes.update(stack.stop()))
            stopper.start()
            rest = list(stream)
        stopper.join(120)
        assert not stopper.is_alive()
    got = len(first.audio) + sum(len(m.audio) for m in rest)
    assert got == len(expected.audio) - 44  # the WAV header; the PCM is complete
    assert codes == dict.fromkeys(("gateway", *STAGES), 0), codes
    assert stack.restarts == dict.fromkeys(("gateway", *STAGES), 0)
    # The gateway was told to stop while the stream was still being synthesised.
    finished = [t for t, m in _events(tmp_path, "gateway") if m == "synthesized"][-1]
    assert _when(tmp_path, "gateway", "received SIGTERM; draining") < finished
    _assert_stopped_in_order(tmp_path)


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> tuple[re.Match, str]:
    """Read `proc`'s stdout until a line matches `pattern` (the lines so far, for errors)."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if found := re.search(pattern, line):
            return found, "".join(seen)
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def _speech(url: str, text: str) -> Iterator[bytes]:
    """POST /v1/audio/speech (raw PCM), yielding the response as it streams."""
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    request = urllib.request.Request(
        f"{url}/v1/audio/speech",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        assert reply.status == 200
        while chunk := reply.read1(65536):
            yield chunk


def test_group_sigint_stops_voxline_serve_in_order(tmp_path: Path) -> None:
    """`voxline serve` in its own process group gets SIGINT to the whole group (a terminal's
    Ctrl-C, `kill -INT -PGID`): an HTTP request and a gRPC stream in flight both finish,
    the services stop front door first on the launcher's SIGTERM (they never see the
    SIGINT, so nothing exits early and nothing is restarted), and `voxline serve` exits 0."""
    serve = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve", "--free-ports",
         "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        found, _ = _read_until(serve, r"Gateway: (\S+)", 240)
        gateway = found.group(1)
        found, _ = _read_until(serve, r"HTTP API: (\S+)/v1", 10)
        http_url = found.group(1)
        (run_dir,) = tmp_path.iterdir()
        expected_http = sum(len(c) for c in _speech(http_url, LONG_TEXT))
        with grpc.insecure_channel(gateway) as channel:
            stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
            expected = stub.Synthesize(pb.SynthesizeRequest(text=LONG_TEXT), timeout=120)
            # Both in flight: the HTTP response has begun, the gRPC stream has its first audio.
            http_chunks = _speech(http_url, LONG_TEXT)
            http_got = len(next(http_chunks))
            stream = stub.SynthesizeStream(pb.SynthesizeRequest(text=LONG_TEXT), timeout=120)
            got = len(next(stream).audio)
            os.killpg(serve.pid, signal.SIGINT)
            http_got += sum(len(c) for c in http_chunks)
            got += sum(len(m.audio) for m in stream)
        output, _ = serve.communicate(timeout=120)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert serve.returncode == 0, output
    assert "stopping" in output and "stopped" in output, output
    assert http_got == expected_http
    assert got == len(expected.audio) - 44
    # The HTTP front drained before the gateway was signalled, the gateway before the stages.
    assert _when(run_dir, "gateway", "received SIGTERM; draining") >= max(
        t for t, _ in _events(run_dir, "http")
    )
    _assert_stopped_in_order(run_dir, front=("http", "gateway"))
