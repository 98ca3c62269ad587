"""The HTTP front's WAV headers: a non-streamed answer (`"stream": false`) is a whole file
whose RIFF and data sizes are right, with a Content-Length; a streamed one (the default) says
"unknown" (0xFFFFFFFF) and its length is the bytes after the 44-byte header."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import anyio
import grpc
import openai
import pytest

from services.cli.stack import LocalStack, free_port, wait_http_ready
from services.http import READY_PATH
from services.http.app import _whole_audio
from services.http.errors import ApiError

TEXT = "A whole file, sized before it is sent."
UNKNOWN = 0xFFFFFFFF


@pytest.fixture(scope="module")
def http_url(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m services.http` in front of the session's stack."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("http-wav") / "http.log"
    cmd = [sys.executable, "-m", "services.http", "--port", str(port)]
    cmd += ["--gateway-address", stack.gateway]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXLINE_API_TOKEN")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(url + READY_PATH, 60, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _speech(url: str, **fields: object) -> tuple[bytes, dict[str, str]]:
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, **fields}
    request = urllib.request.Request(
        url + "/v1/audio/speech",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return reply.read(), {k.lower(): v for k, v in reply.headers.items()}


def _sizes(data: bytes) -> tuple[int, int]:
    """(RIFF size, data size) of a 44-byte-header WAV."""
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt " and data[36:40] == b"data"
    return struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[40:44])[0]


def _check_whole_wav(data: bytes) -> int:
    """The frame count of a WAV whose header must carry its real sizes."""
    riff, size = _sizes(data)
    assert (riff, size) == (len(data) - 8, len(data) - 44)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        frames = w.getnframes()
        assert len(w.readframes(frames)) == 2 * frames
    assert frames == (len(data) - 44) // 2 > 24000 // 2  # half a second at least
    return frames


def test_non_streamed_wav_has_its_real_sizes(http_url: str) -> None:
    data, headers = _speech(http_url, response_format="wav", stream=False)
    assert headers["content-type"] == "audio/wav"
    assert int(headers["content-length"]) == len(data)
    assert "transfer-encoding" not in headers
    frames = _check_whole_wav(data)

    # The default streams: sizes "unknown", the same audio after the header.
    streamed, headers = _speech(http_url, response_format="wav")
    assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
    assert _sizes(streamed) == (UNKNOWN, UNKNOWN)
    assert (len(streamed) - 44) // 2 == frames  # how README says to count it
    with wave.open(io.BytesIO(streamed)) as w:
        assert w.getnframes() == 2**31 - 1  # what Python's wave makes of "unknown"
        assert len(w.readframes(w.getnframes())) == 2 * frames


def test_non_streamed_pcm_is_sized(http_url: str) -> None:
    pcm, headers = _speech(http_url, response_format="pcm", stream=False)
    assert headers["content-type"] == "audio/pcm"
    assert int(headers["content-length"]) == len(pcm) and len(pcm) % 2 == 0
    wav, _ = _speech(http_url, response_format="wav", stream=False)
    assert wav[44:] == pcm


def test_openai_client_non_streamed_wav(http_url: str) -> None:
    client = openai.OpenAI(base_url=http_url + "/v1", api_key="unused", max_retries=3)
    reply = client.audio.speech.create(
        model="tts-1",
        voice="alloy",
        input=TEXT,
        response_format="wav",
        extra_body={"stream": False},
    )
    assert int(reply.response.headers["content-length"]) == len(reply.content)
    _check_whole_wav(reply.content)


def test_non_streamed_refusal_is_an_http_status(http_url: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        _speech(http_url, input="x" * 6000, stream=False)
    assert info.value.code == 400
    assert "limit" in json.loads(info.value.read())["error"]["message"]


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "vocoder stage unavailable; retry shortly"


class _Call:
    """A gateway stream: one more message, then a failure; or, with `hang`, nothing until it
    is cancelled."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.cancelled = threading.Event()
        self.sent = False

    def __iter__(self) -> _Call:
        return self

    def __next__(self) -> Any:
        if self.hang:
            self.cancelled.wait(30)
            raise _Failed(grpc.StatusCode.CANCELLED)
        if not self.sent:
            self.sent = True
            return SimpleNamespace(audio=b"\x01\x00")
        raise _Failed(grpc.StatusCode.UNAVAILABLE)

    def cancel(self) -> None:
        self.cancelled.set()


class _Request:
    def __init__(self, disconnect: bool) -> None:
        self.disconnect = disconnect

    async def receive(self) -> dict[str, str]:
        if not self.disconnect:
            await anyio.sleep_forever()
        return {"type": "http.disconnect"}


def _collect(call: _Call, disconnect: bool) -> bytes:
    first = SimpleNamespace(audio=b"\x00\x00")
    threads = anyio.CapacityLimiter(2)

    async def run() -> bytes:
        return await _whole_audio(call, first, _Request(disconnect), threads)  # type: ignore[arg-type]

    return anyio.run(run)


def test_a_failure_mid_synthesis_is_still_an_http_status() -> None:
    """Nothing is sent before the whole audio is there: a gateway error after the first audio
    becomes the OpenAI-style error (here 503), not a cut file."""
    call = _Call()
    with pytest.raises(ApiError) as info:
        _collect(call, disconnect=False)
    assert info.value.status == 503
    assert call.cancelled.is_set()


def test_a_client_that_leaves_cancels_the_call() -> None:
    call = _Call(hang=True)
    with pytest.raises(ApiError):
        _collect(call, disconnect=True)
    assert call.cancelled.is_set()
