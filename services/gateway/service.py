"""The gateway: Voxline's public Synthesizer API, composed from the three stages."""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
from voxline.v1 import synthesizer_pb2, synthesizer_pb2_grpc

from services.gateway.audio import SUPPORTED_SAMPLE_RATES, StreamResampler, resample, wav_bytes
from services.gateway.pipeline import Job, Pipeline
from services.gateway.stages import StageClients
from services.gateway.validation import validate
from services.runtime.config import DEFAULT_PORTS, add_flag, build_parser, parse_config
from services.runtime.server import StageRuntime, rpc_method, serve
from services.runtime.voice import LANGUAGE_CODE, VOICE_NAME

log = logging.getLogger("voxline.gateway")

LINEAR16 = synthesizer_pb2.AUDIO_ENCODING_LINEAR16


class VoiceCatalog:
    """The voices the stages serve, asked of them once and cached."""

    def __init__(self, clients: StageClients, timeout: float = 5.0) -> None:
        self._clients = clients
        self._timeout = timeout
        self._lock = threading.Lock()
        self._voices: list[synthesizer_pb2.Voice] | None = None

    def voices(self) -> list[synthesizer_pb2.Voice]:
        with self._lock:
            if self._voices is None:
                infos = [c.info(self._timeout) for c in self._clients.all()]
                frontend, acoustic, vocoder = infos
                names = set(frontend.voices) & set(acoustic.voices) & set(vocoder.voices)
                trained = frontend.trained and acoustic.trained
                self._voices = [
                    synthesizer_pb2.Voice(
                        name=name,
                        language_code=LANGUAGE_CODE,
                        native_sample_rate_hz=vocoder.sample_rate_hz,
                        supported_sample_rates_hz=list(SUPPORTED_SAMPLE_RATES),
                        trained=trained,
                        model_version=(
                            f"{frontend.model_name}@{frontend.model_version}+"
                            f"{acoustic.model_name}@{acoustic.model_version}+"
                            f"{vocoder.model_name}@{vocoder.model_version}"
                        ),
                        description=(
                            "English (US) voice"
                            if trained
                            else "UNTRAINED: frontend/acoustic weights are a seeded "
                            "initialisation; output has the right length and format but is "
                            "not intelligible speech"
                        ),
                    )
                    for name in sorted(names)
                ]
            return self._voices


class SynthesizerServicer(synthesizer_pb2_grpc.SynthesizerServicer):
    def __init__(
        self, pipeline: Pipeline, catalog: VoiceCatalog, max_text_chars: int, timeout_s: float
    ) -> None:
        self._pipeline = pipeline
        self._catalog = catalog
        self._max_text_chars = max_text_chars
        self._timeout_s = timeout_s

    def _job(
        self, request: synthesizer_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> tuple[Job, int]:
        names = {v.name for v in self._catalog.voices()}
        voice, rate, sample_rate = validate(request, self._max_text_chars, names)
        remaining = context.time_remaining()
        budget = self._timeout_s if remaining is None else min(remaining, self._timeout_s)
        job = Job(
            text=request.text,
            voice=voice or VOICE_NAME,
            speaking_rate=rate,
            request_id=request.request_id or uuid.uuid4().hex,
            deadline=time.monotonic() + budget,
        )
        return job, sample_rate

    @rpc_method
    def Synthesize(
        self, request: synthesizer_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> synthesizer_pb2.SynthesizeResponse:
        t0 = time.perf_counter()
        job, sample_rate = self._job(request, context)
        pieces = [p.pcm for p in self._pipeline.synthesize(job)]
        pcm = resample(np.concatenate(pieces), sample_rate)
        seconds = len(pcm) / sample_rate
        elapsed = time.perf_counter() - t0
        log.info(
            "synthesized",
            extra={
                "request_id": job.request_id,
                "method": "unary",
                "chars": len(request.text),
                "audio_s": round(seconds, 3),
                "elapsed_s": round(elapsed, 3),
                "rtf": round(elapsed / seconds, 3) if seconds else None,
            },
        )
        return synthesizer_pb2.SynthesizeResponse(
            audio=wav_bytes(pcm, sample_rate),
            sample_rate_hz=sample_rate,
            duration_seconds=seconds,
            encoding=LINEAR16,
            request_id=job.request_id,
        )

    @rpc_method
    def SynthesizeStream(
        self, request: synthesizer_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> Iterator[synthesizer_pb2.SynthesizeStreamResponse]:
        t0 = time.perf_counter()
        job, sample_rate = self._job(request, context)
        resampler = StreamResampler(sample_rate)
        samples = 0
        first_audio_s: float | None = None
        last_index = 0
        for piece in self._pipeline.synthesize_stream(job):
            pcm = resampler.process(piece.pcm)
            last_index = piece.sentence_index
            if not len(pcm):
                continue
            if first_audio_s is None:
                first_audio_s = time.perf_counter() - t0
            samples += len(pcm)
            yield self._chunk(pcm, sample_rate, piece.sentence_index, job.request_id)
        tail = resampler.process(np.zeros(0, dtype=np.int16), last=True)
        if len(tail):
            samples += len(tail)
            yield self._chunk(tail, sample_rate, last_index, job.request_id)
        seconds = samples / sample_rate
        elapsed = time.perf_counter() - t0
        log.info(
            "synthesized",
            extra={
                "request_id": job.request_id,
                "method": "stream",
                "chars": len(request.text),
                "audio_s": round(seconds, 3),
                "ttfa_s": round(first_audio_s or 0.0, 3),
                "elapsed_s": round(elapsed, 3),
                "rtf": round(elapsed / seconds, 3) if seconds else None,
            },
        )

    @staticmethod
    def _chunk(
        pcm: np.ndarray, sample_rate: int, sentence_index: int, request_id: str
    ) -> synthesizer_pb2.SynthesizeStreamResponse:
        return synthesizer_pb2.SynthesizeStreamResponse(
            audio=pcm.astype("<i2", copy=False).tobytes(),
            sample_rate_hz=sample_rate,
            encoding=LINEAR16,
            sentence_index=sentence_index,
            request_id=request_id,
        )

    @rpc_method
    def ListVoices(
        self, request: synthesizer_pb2.ListVoicesRequest, context: grpc.ServicerContext
    ) -> synthesizer_pb2.ListVoicesResponse:
        return synthesizer_pb2.ListVoicesResponse(
            voices=self._catalog.voices(), default_voice=VOICE_NAME
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("gateway", "Voxline gateway: the public Synthesizer API")
    for stage in ("frontend", "acoustic", "vocoder"):
        add_flag(
            parser,
            f"{stage}-address",
            str,
            f"127.0.0.1:{DEFAULT_PORTS[stage]}",
            f"{stage} stage target (e.g. dns:///{stage}.voxline.svc:50051)",
        )
    add_flag(parser, "max-text-chars", int, 5000, "longest accepted text")
    add_flag(parser, "request-timeout-s", float, 120.0, "upper bound on one synthesis")
    add_flag(parser, "stream-chunk-frames", int, 32, "mel frames per acoustic->vocoder chunk")
    config = parse_config("gateway", parser, argv)
    x = config.extra
    clients = StageClients(x["frontend_address"], x["acoustic_address"], x["vocoder_address"])
    pipeline = Pipeline(clients, x["stream_chunk_frames"])
    servicer = SynthesizerServicer(
        pipeline, VoiceCatalog(clients), x["max_text_chars"], x["request_timeout_s"]
    )

    def register(server: grpc.Server, runtime: StageRuntime) -> list[str]:
        synthesizer_pb2_grpc.add_SynthesizerServicer_to_server(servicer, server)
        return [synthesizer_pb2.DESCRIPTOR.services_by_name["Synthesizer"].full_name]

    try:
        return serve(config, None, register)
    finally:
        clients.close()


if __name__ == "__main__":
    sys.exit(main())
