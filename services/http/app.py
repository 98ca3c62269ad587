"""The OpenAI-compatible speech API over HTTP, served from the gateway's `SynthesizeStream`.

Policies (README, "OpenAI-compatible HTTP API"):

- Models: `voxline-tts`, and OpenAI's TTS model names as aliases of it, so stock clients
  work unchanged (`GET /v1/models` lists them all).
- Voices: OpenAI's built-in voice names all speak as the gateway's default voice (Voxline
  ships one voice); a Voxline voice name (`ListVoices`) selects that voice; anything else
  is a 400 that lists what is accepted.
- Formats: `wav` and `pcm` (raw s16le mono), both at OpenAI's 24 kHz (the gateway
  resamples); mp3/opus/aac/flac are refused with a 400 naming the supported ones. No
  `response_format` means `wav` (OpenAI's default, mp3, is not produced here).
- Streaming (the default, as OpenAI's): the body is chunked and PCM is written as the gateway
  sends it. `wav` starts with a streaming header whose RIFF and data sizes are 0xFFFFFFFF
  ("unknown", as OpenAI's own streamed WAV does): readers take the data to the end of the
  file, and its length is (bytes - 44) / 2 samples (Python's `wave` reports 2**31 - 1 frames).
  `"stream": false` (a Voxline extension, as Kokoro-FastAPI's) answers once the synthesis is
  done, with a Content-Length and, for `wav`, a header carrying the real sizes.
- Errors before the first audio become an HTTP status with an OpenAI-style body. An error
  after the first audio cannot change the 200 already sent: the connection is closed without
  the chunked body's terminating chunk, so clients see an incomplete body, not a short file
  that looks whole.
- Limits (services/http/limits.py, docs/reliability.md "HTTP front"): each request has a total
  deadline that the gateway call inherits, its body a shorter one (408), and `/readyz` answers
  from a cache refreshed in the background (services/http/readiness.py).
"""

from __future__ import annotations

import hmac
import logging
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from voxline.v1 import synthesizer_pb2, synthesizer_pb2_grpc

from services.gateway.validation import MAX_RATE, MIN_RATE
from services.http import HEALTH_PATH, READY_PATH
from services.http.errors import SERVER_ERROR, ApiError, from_grpc
from services.http.limits import request_deadline, seconds_left
from services.http.readiness import Readiness
from services.http.tracing import Receive, Scope, Send
from services.runtime.config import DEFAULT_PORTS
from services.runtime.wav import wav_bytes

log = logging.getLogger("voxline.http")

#: The model name Voxline answers to, and OpenAI's TTS models accepted as aliases of it.
MODEL_ID = "voxline-tts"
MODEL_ALIASES = (
    "tts-1",
    "tts-1-hd",
    "gpt-4o-mini-tts",
    "gpt-4o-mini-tts-2025-03-20",
    "gpt-4o-mini-tts-2025-12-15",
)
MODELS = (MODEL_ID, *MODEL_ALIASES)
#: OpenAI's built-in voices: each speaks as the gateway's default voice.
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
#: OpenAI's `pcm` is 24 kHz s16le mono; `wav` uses the same rate.
SAMPLE_RATE_HZ = 24000
FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"}
DEFAULT_FORMAT = "wav"
#: OpenAI formats that would need an encoder this service does not ship.
UNSUPPORTED_FORMATS = ("mp3", "opus", "aac", "flac")
#: Largest request body read: far above any text the gateway accepts, small enough that a
#: hostile body costs no memory to speak of.
MAX_BODY_BYTES = 1024 * 1024
#: 0xFFFFFFFF: the RIFF and data sizes of a WAV whose length is not known when it starts.
UNKNOWN_SIZE = 0xFFFFFFFF
#: Longest wait for the gateway's voice list (within the request's own deadline).
VOICES_TIMEOUT_S = 10.0


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 44-byte RIFF/WAVE header for s16le mono PCM of unknown length."""
    channels, width = 1, 2
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_SIZE)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,  # fmt chunk size
            1,  # PCM
            channels,
            sample_rate,
            sample_rate * channels * width,
            channels * width,
            8 * width,
        )
        + b"data"
        + struct.pack("<I", UNKNOWN_SIZE)
    )


class VoiceRef(BaseModel):
    """OpenAI's custom-voice form, `{"id": "..."}`."""

    id: str


class SpeechRequest(BaseModel):
    """The body of `POST /v1/audio/speech` (unknown fields are ignored, as OpenAI does)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str
    voice: str | VoiceRef
    response_format: str | None = None
    speed: float | None = None
    #: Accepted and ignored: Voxline's voice takes no style prompt (like OpenAI's tts-1).
    instructions: str | None = None
    stream_format: str | None = None
    #: Voxline's extension: false answers with the whole, sized file once it is made.
    stream: bool = True


@dataclass(frozen=True)
class Settings:
    """The service's settings; services/http/main.py's flags take their defaults from here."""

    gateway_address: str = f"127.0.0.1:{DEFAULT_PORTS['gateway']}"
    #: Total deadline of one HTTP request -- reading its body, the gateway call, streaming
    #: the response -- enforced by the server (504, or a cut stream); the gateway call
    #: carries what is left of it as its gRPC deadline.
    request_timeout_s: float = 120.0
    #: Deadline for reading a request's body (408): a stalled upload frees its slot early.
    body_timeout_s: float = 10.0
    #: A connection waiting for a request head (new, or after a response) is closed if none
    #: completes within this (slow headers; uvicorn has no such timeout).
    header_timeout_s: float = 10.0
    #: Requests in flight at once (probes exempt); beyond it, 503 at once.
    limit_concurrency: int = 64
    #: How often the background check refreshes `/readyz`'s cached gateway health.
    ready_interval_s: float = 2.0
    #: Required bearer token ("" = no check); also sent to the gateway, which may require it.
    api_token: str = ""


class Gateway:
    """The gRPC side: one instrumented channel to the gateway, and its voices (cached)."""

    def __init__(self, channel: grpc.Channel, settings: Settings) -> None:
        self.channel = channel
        self.stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        #: Worker threads for the blocking gRPC calls: as many as requests may be in flight,
        #: so no admitted stream waits for a thread (anyio's shared pool has 40).
        self.threads = anyio.CapacityLimiter(settings.limit_concurrency)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {settings.api_token}"),) if settings.api_token else ()
        )
        self._lock = threading.Lock()
        self._voices: synthesizer_pb2.ListVoicesResponse | None = None

    def voices(self, deadline: float) -> synthesizer_pb2.ListVoicesResponse:
        """The gateway's voices (asked once; a failure is retried on the next request)."""
        with self._lock:
            if self._voices is None:
                self._voices = self.stub.ListVoices(
                    synthesizer_pb2.ListVoicesRequest(),
                    timeout=min(VOICES_TIMEOUT_S, seconds_left(deadline)),
                    metadata=self.metadata,
                )
            return self._voices

    def start(self, request: synthesizer_pb2.SynthesizeRequest, deadline: float) -> Any:
        """Start a SynthesizeStream call (a cancellable iterator of chunks) that ends by the
        HTTP request's `deadline` (`time.monotonic()`)."""
        return self.stub.SynthesizeStream(
            request, timeout=seconds_left(deadline), metadata=self.metadata
        )


def _next(call: Iterator[Any]) -> Any:
    # StopIteration cannot cross a thread hop into a coroutine: None marks the end.
    return next(call, None)


class AudioStream(Response):
    """A 200 whose chunked body is `head` plus the PCM of `call`'s messages, starting with
    `first`. The gRPC call is cancelled when the client goes away or the response ends early
    (the request's deadline)."""

    def __init__(
        self,
        call: Any,
        first: Any,
        head: bytes,
        media_type: str,
        request_id: str,
        threads: anyio.CapacityLimiter,
    ):
        # No content-length: the length is unknown, so the body is chunked.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", media_type.encode("latin-1")),
            (b"x-request-id", request_id.encode("latin-1")),
        ]
        self.call = call
        self.first = first
        self.head = head
        self.threads = threads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(receive, send)
        finally:
            # Cancelled (the request's deadline, e.g. a client that stopped reading): free the
            # gateway's slot and stages now. A no-op on a call that has ended.
            self.call.cancel()

    async def _respond(self, receive: Receive, send: Send) -> None:
        span = trace.get_current_span()
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        complete = False
        async with anyio.create_task_group() as tasks:

            async def cancel_on_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.call.cancel()  # frees the gateway's slot and stages at once
                tasks.cancel_scope.cancel()

            tasks.start_soon(cancel_on_disconnect)
            complete = await self._pump(send, span)
            tasks.cancel_scope.cancel()
        if complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # else: returning without the final message makes the server close the connection
        # with the chunked body unterminated -- the only way left to say "failed".

    async def _pump(self, send: Send, span: trace.Span) -> bool:
        """Send the audio; False if the gateway call failed mid-stream."""
        body = self.head + self.first.audio
        try:
            while True:
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                message = await anyio.to_thread.run_sync(_next, self.call, limiter=self.threads)
                if message is None:
                    return True
                body = message.audio
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.CANCELLED:
                return False  # the client left
            span.set_attribute("error.type", code.name)
            span.set_status(Status(StatusCode.ERROR, f"{code.name} after the first audio"))
            log.warning("stream failed after the first audio", extra={"code": code.name})
            return False


def _model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "voxline"}


def create_app(settings: Settings, gateway: Gateway, readiness: Readiness) -> FastAPI:
    """The FastAPI app: `/v1/audio/speech`, `/v1/models`, `/healthz`, `/readyz`."""
    app = FastAPI(
        title="Voxline OpenAI-compatible speech API",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # FastAPI's own telemetry is off: ServerSpanMiddleware makes the one server span
        # (FastAPI's would add operation spans, and its logs may quote request values).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    created = int(time.time())
    expected = settings.api_token.encode("utf-8")

    def authorize(request: Request) -> None:
        if not expected:
            return
        header = request.headers.get("authorization", "")
        scheme, _, supplied = header.partition(" ")
        # compare_digest: no timing hint of how much of the token matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            supplied.strip().encode("utf-8"), expected
        ):
            raise ApiError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        return exc.response({"x-request-id": request_id} if request_id else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(400, "invalid request").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = SERVER_ERROR if exc.status_code >= 500 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), type_=type_).response()

    @app.get(HEALTH_PATH)
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves HTTP."""
        return {"status": "ok"}

    @app.get(READY_PATH)
    async def readyz() -> JSONResponse:
        """Readiness: the gateway reported SERVING at its last background check."""
        ok = readiness.ready
        return JSONResponse({"status": "ok" if ok else "gateway not serving"}, 200 if ok else 503)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        """The model names a client may send."""
        authorize(request)
        return {"object": "list", "data": [_model_card(m, created) for m in MODELS]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        """One model, or a 404 like OpenAI's."""
        authorize(request)
        if model_id not in MODELS:
            raise ApiError(
                404, f"unknown model; available: {', '.join(MODELS)}", code="model_not_found"
            )
        return _model_card(model_id, created)

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        """Synthesise `input`, streaming the audio as it is produced."""
        request.state.request_id = request_id = uuid.uuid4().hex
        deadline = request_deadline(request.scope, settings.request_timeout_s)
        authorize(request)
        body = await _parse(request, settings.body_timeout_s)
        if body.model not in MODELS:
            raise ApiError(
                400,
                f"unknown model; available: {', '.join(MODELS)}",
                param="model",
                code="model_not_found",
            )
        media_type = _format(body)
        if not body.input.strip():
            raise ApiError(400, "input is empty", param="input")
        speed = body.speed if body.speed is not None else 1.0
        if not MIN_RATE <= speed <= MAX_RATE:
            raise ApiError(400, f"speed must be between {MIN_RATE} and {MAX_RATE}", param="speed")
        voice = await _voice(gateway, body.voice, deadline)  # last: it may ask the gateway
        message = synthesizer_pb2.SynthesizeRequest(
            text=body.input,
            voice=voice,
            speaking_rate=speed,
            sample_rate_hz=SAMPLE_RATE_HZ,
            encoding=synthesizer_pb2.AUDIO_ENCODING_LINEAR16,
            request_id=request_id,
        )

        def begin() -> tuple[Any, Any]:
            # Started in a worker thread that carries the server span's context, so the
            # instrumented channel makes the gateway call its child.
            call = gateway.start(message, deadline)
            return call, next(call, None)

        try:
            call, first = await anyio.to_thread.run_sync(begin, limiter=gateway.threads)
        except grpc.RpcError as exc:
            raise from_grpc(exc) from None
        if first is None:  # the gateway ended the stream without audio: not expected
            raise ApiError(500, "the synthesis produced no audio", type_=SERVER_ERROR)
        if not body.stream:
            pcm = await _whole_audio(call, first, request, gateway.threads)
            whole = wav_bytes(pcm, SAMPLE_RATE_HZ) if media_type == FORMATS["wav"] else pcm
            return Response(whole, media_type=media_type, headers={"x-request-id": request_id})
        head = streaming_wav_header(SAMPLE_RATE_HZ) if media_type == FORMATS["wav"] else b""
        return AudioStream(call, first, head, media_type, request_id, gateway.threads)

    return app


async def _whole_audio(
    call: Any, first: Any, request: Request, threads: anyio.CapacityLimiter
) -> bytes:
    """All of a call's PCM, starting with its `first` message (a non-streamed answer: a
    failure is still an HTTP status). A client that leaves cancels the call."""

    def rest() -> bytes | grpc.RpcError:
        try:
            return first.audio + b"".join(message.audio for message in call)
        except grpc.RpcError as exc:  # returned: a task group would wrap it in a group
            return exc

    try:
        async with anyio.create_task_group() as tasks:

            async def cancel_on_disconnect() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                call.cancel()

            tasks.start_soon(cancel_on_disconnect)
            audio = await anyio.to_thread.run_sync(rest, limiter=threads)
            tasks.cancel_scope.cancel()
    finally:
        call.cancel()  # a no-op once it ended
    if isinstance(audio, grpc.RpcError):
        raise from_grpc(audio)
    return audio


async def _parse(request: Request, timeout_s: float) -> SpeechRequest:
    """The JSON body, read within `timeout_s` (408) and at most MAX_BODY_BYTES (413), as a
    SpeechRequest (400 otherwise)."""
    try:
        with anyio.fail_after(timeout_s):
            body = await _read_body(request)
    except TimeoutError:
        # Closing the connection drops the rest of the body (and the client's hold on it).
        raise ApiError(
            408,
            f"the request body did not arrive within {timeout_s:g} s",
            code="request_timeout",
            headers={"connection": "close"},
        ) from None
    try:
        return SpeechRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        loc = [str(p) for p in first.get("loc", ()) if isinstance(p, str)]
        param = loc[0] if loc and loc[0] in SpeechRequest.model_fields else None
        where = f"{'.'.join(loc)}: " if loc else ""
        raise ApiError(400, f"invalid request body: {where}{first['msg']}", param=param) from None


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it passes MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _format(body: SpeechRequest) -> str:
    """The media type of the requested `response_format` (400 for one not produced here)."""
    if body.stream_format not in (None, "audio"):
        raise ApiError(
            400, "stream_format must be 'audio' (sse is not supported)", param="stream_format"
        )
    fmt = body.response_format or DEFAULT_FORMAT
    if fmt not in FORMATS:
        kind = "is not supported here" if fmt in UNSUPPORTED_FORMATS else "is unknown"
        raise ApiError(
            400,
            f"response_format {kind}; supported: {', '.join(FORMATS)}",
            param="response_format",
            code="unsupported_value",
        )
    return FORMATS[fmt]


async def _voice(gateway: Gateway, voice: str | VoiceRef, deadline: float) -> str:
    """The gateway voice for OpenAI's `voice` ("" = the default voice)."""
    name = voice.id if isinstance(voice, VoiceRef) else voice
    if name in OPENAI_VOICES:
        return ""
    try:
        voices = await anyio.to_thread.run_sync(gateway.voices, deadline, limiter=gateway.threads)
    except grpc.RpcError as exc:
        raise from_grpc(exc) from None
    served = sorted(v.name for v in voices.voices)
    if name in served:
        return name
    raise ApiError(
        400,
        f"unknown voice; use an OpenAI voice ({', '.join(OPENAI_VOICES)}: each speaks as "
        f"{voices.default_voice}) or a Voxline voice ({', '.join(served)})",
        param="voice",
    )
