"""The OpenAI-compatible HTTP service (services/http), driven by the official `openai` client.

One real stack (gateway with --max-active 1, so one long stream makes the next request a
429) exporting traces to an in-process OTLP receiver, and the HTTP service in front of it as
a real `python -m services.http` process with an API token.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import threading
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from services.cli.stack import LocalStack, free_port, wait_http_ready
from services.http import HEALTH_PATH, READY_PATH
from telemetry.otlp_receiver import OtlpReceiver

TOKEN = "test-" + secrets.token_hex(8)
# Must never leave the request body: not in spans, not in the HTTP service's logs.
MARKER = "Zebulon" + secrets.token_hex(4)
LONG_TEXT = " ".join(
    f"This is sentence number {n}, long enough to keep the only synthesis slot busy."
    for n in range(1, 9)
)
SERVER = 2


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def otel_env(receiver: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }


@pytest.fixture(scope="module")
def stack(
    otel_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    extra = {"gateway": ["--max-active", "1"]}
    with LocalStack(tmp_path_factory.mktemp("http-stack"), env=otel_env, extra_args=extra) as s:
        yield s


@pytest.fixture(scope="module")
def http_service(
    stack: LocalStack, otel_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """`python -m services.http` with a token; yields (base URL, its log file)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("http") / "http.log"
    env = {**os.environ, **otel_env, "VOXLINE_API_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "services.http", "--port", str(port)]
    cmd += ["--gateway-address", stack.gateway]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(url + READY_PATH, 60, proc)
        yield url, log_path
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log_path.read_text()


@pytest.fixture(scope="module")
def client(http_service: tuple[str, Path]) -> openai.OpenAI:
    # Retries honour retry-after-ms: a slot still held by a previous test's cancelled stream
    # for a moment is not a failure of the test at hand.
    return openai.OpenAI(base_url=http_service[0] + "/v1", api_key=TOKEN, max_retries=3)


def _decode_wav(data: bytes) -> tuple[int, float]:
    """(sample rate, duration) of a streamed WAV (its sizes say "unknown": read to the end)."""
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        frames = w.readframes(w.getnframes())
        return w.getframerate(), len(frames) / 2 / w.getframerate()


def test_wav(client: openai.OpenAI) -> None:
    reply = client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there, this is a test.", response_format="wav"
    )
    rate, seconds = _decode_wav(reply.content)
    assert rate == 24000
    assert 0.5 < seconds < 10, seconds


def test_streamed_pcm(client: openai.OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="voxline-tts", voice="voxline-en-us", input="Streamed, please.", response_format="pcm"
    ) as reply:
        assert reply.headers["content-type"] == "audio/pcm"
        assert reply.headers.get("transfer-encoding") == "chunked"
        pcm = b"".join(reply.iter_bytes())
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    assert 0.3 < len(pcm) / 2 / 24000 < 10


def test_streamed_wav_and_speed(client: openai.OpenAI) -> None:
    def seconds(speed: float) -> float:
        with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="nova",
            input="One two three four five.",
            response_format="wav",
            speed=speed,
        ) as reply:
            return _decode_wav(b"".join(reply.iter_bytes()))[1]

    assert seconds(2.0) < 0.8 * seconds(1.0)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": "   "}, "input"),
        ({"response_format": "mp3"}, "response_format"),
        ({"response_format": "flac"}, "response_format"),
        ({"voice": "nobody"}, "voice"),
        ({"model": "whisper-1"}, "model"),
        ({"speed": 5.0}, "speed"),
    ],
)
def test_bad_requests_are_400(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    args: dict[str, Any] = {"model": "tts-1", "voice": "alloy", "input": "Hi."}
    args["response_format"] = "wav"
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(**{**args, **kwargs})
    error = err.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if param == "response_format":
        assert "wav, pcm" in error["message"]


def test_gateway_validation_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 6000)
    assert "limit" in err.value.message


def test_invalid_json_is_400(http_service: tuple[str, Path]) -> None:
    status, body, _ = _post(http_service[0] + "/v1/audio/speech", b"{not json", TOKEN)
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


def test_wrong_key_is_401(http_service: tuple[str, Path]) -> None:
    bad = openai.OpenAI(base_url=http_service[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    assert err.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    for path in (HEALTH_PATH, READY_PATH):  # probes carry no token
        with urllib.request.urlopen(http_service[0] + path, timeout=5) as reply:
            assert reply.status == 200


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"voxline-tts", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(ids)
    assert client.models.retrieve("tts-1").id == "tts-1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")


def test_overload_is_429_with_retry_after(http_service: tuple[str, Path]) -> None:
    """The gateway runs one synthesis at a time: a second request while a long stream holds
    the slot gets 429 with the gateway's retry hint as Retry-After."""
    url = http_service[0] + "/v1"
    first = openai.OpenAI(base_url=url, api_key=TOKEN, max_retries=3)
    second = openai.OpenAI(base_url=url, api_key=TOKEN, max_retries=0)
    streaming = threading.Event()
    release = threading.Event()

    def hold_the_slot() -> None:
        with first.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=LONG_TEXT, response_format="pcm"
        ) as reply:
            for _ in reply.iter_bytes():
                streaming.set()
                if release.wait(0):
                    break  # leaving cancels the gateway call

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    try:
        assert streaming.wait(60), "the first stream never started"
        with pytest.raises(openai.RateLimitError) as err:
            second.audio.speech.create(model="tts-1", voice="alloy", input=LONG_TEXT)
    finally:
        release.set()
        holder.join(120)
    headers = err.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert int(headers["retry-after-ms"]) > 0
    assert err.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]


def test_trace_continues_into_the_gateway(
    client: openai.OpenAI, receiver: OtlpReceiver, http_service: tuple[str, Path]
) -> None:
    """The HTTP server span continues the caller's traceparent and is an ancestor of the
    gateway's SynthesizeStream server span; the input text is in no span and no log."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=f"{MARKER} says hello.",
        response_format="pcm",
        extra_headers={"traceparent": f"00-{trace_id}-{parent}-01"},
    ) as reply:
        assert len(b"".join(reply.iter_bytes())) > 0

    def spans() -> list[dict[str, Any]] | None:
        got = [s for s in receiver.spans() if s["trace_id"] == trace_id]
        servers = {s["name"] for s in got if s["kind"] == SERVER}
        wanted = {"POST /v1/audio/speech", "/voxline.v1.Synthesizer/SynthesizeStream"}
        return got if wanted <= servers else None

    got = receiver.wait_for(lambda r: spans(), timeout=30)
    by_id = {s["span_id"]: s for s in got}
    (http,) = [s for s in got if s["name"] == "POST /v1/audio/speech"]
    assert http["kind"] == SERVER and http["parent_span_id"] == parent
    assert http["resource"]["service.name"] == "http"
    assert http["attributes"]["http.response.status_code"] == 200
    assert http["attributes"]["http.route"] == "/v1/audio/speech"
    gateway = next(
        s
        for s in got
        if s["name"] == "/voxline.v1.Synthesizer/SynthesizeStream" and s["kind"] == SERVER
    )
    ancestors = []
    span = gateway
    while span["parent_span_id"] in by_id:
        span = by_id[span["parent_span_id"]]
        ancestors.append(span["span_id"])
    assert http["span_id"] in ancestors
    assert MARKER not in json.dumps(receiver.trace_requests())
    assert MARKER not in http_service[1].read_text()


def _post(url: str, body: bytes, token: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)
