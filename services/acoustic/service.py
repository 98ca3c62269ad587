"""gRPC service for the acoustic stage (voxline.v1.AcousticModel)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import grpc
import torch
from voxline.v1 import acoustic_pb2, acoustic_pb2_grpc

from services.acoustic.stage import AcousticStage
from services.acoustic.vits_stage import VitsAcousticStage
from services.runtime.config import ServiceConfig, add_flag, build_parser, parse_config
from services.runtime.errors import InvalidArgument
from services.runtime.memory import bound_kernel_cache
from services.runtime.rpc import rpc_method
from services.runtime.server import serve
from services.runtime.stage_runtime import StageRuntime
from services.runtime.tensors import from_proto, to_proto
from services.runtime.voice import (
    STREAM_WINDOW_FRAMES,
    add_voice_flags,
    add_weights_flags,
    served_voices,
    stage_options,
)
from services.runtime.voices import Routed, VoiceRouter
from services.voices.catalog import VoiceEntry
from telemetry import names

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INTS = (torch.int32, torch.int64)


class AcousticServicer(acoustic_pb2_grpc.AcousticModelServicer):
    def __init__(self, runtime: StageRuntime, voices: VoiceRouter, chunk_frames: int) -> None:
        self.runtime = runtime
        self._voices = voices
        self._chunk_frames = chunk_frames

    def _run(
        self, request: acoustic_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> torch.Tensor:
        with self.runtime.phase(names.PHASE_PREPROCESS):
            self.runtime.require_ready()
            start = self.runtime.playback_start(context)
            self.runtime.annotate(self.runtime.model_attributes())
            voice = self._voices.resolve(request.voice)
            stage = self._voices.stage(voice)
            if request.chunk_frames < 0:
                raise InvalidArgument(f"chunk_frames must be >= 0, got {request.chunk_frames}")
            features = from_proto(request.features, name="features", ndim=2, dtypes=FLOATS)
            durations = from_proto(request.durations, name="durations", ndim=1, dtypes=INTS)
            stage.validate(features, durations)
            payload = stage.make_input(features, durations, request.speaker_id, request.seed)
            frames = int(durations.sum())
            self.runtime.annotate(
                {names.ATTR_TOKEN_COUNT: int(features.shape[0]), names.ATTR_MEL_FRAMES: frames}
            )
        return self.runtime.infer(context, Routed(voice, payload), urgency=start)

    @rpc_method
    def Generate(
        self, request: acoustic_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> acoustic_pb2.GenerateResponse:
        mel = self._run(request, context)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            return acoustic_pb2.GenerateResponse(mel=to_proto(mel))

    @rpc_method
    def GenerateStream(
        self, request: acoustic_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[acoustic_pb2.MelChunk]:
        chunk = request.chunk_frames or self._chunk_frames
        # The conv decoder is cheap next to the vocoder: decode the sentence in one pass,
        # then hand it out in chunks so the vocoder starts on the first one.
        mel = self._run(request, context)
        total = mel.shape[1]
        for start in range(0, total, chunk):
            with self.runtime.phase(names.PHASE_POSTPROCESS):
                message = acoustic_pb2.MelChunk(
                    mel=to_proto(mel[:, start : start + chunk]),
                    offset_frames=start,
                    last=start + chunk >= total,
                )
            yield from self.runtime.send(message)


def voice_stage(entry: VoiceEntry, config: ServiceConfig) -> AcousticStage | VitsAcousticStage:
    """The acoustic stage of one catalogue voice."""
    if entry.architecture == "vits":
        return VitsAcousticStage(entry.folder, config.device, config.dtype)
    return AcousticStage(**stage_options(config))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(
        "acoustic",
        "Voxline acoustic model: phoneme features -> frame-rate features (mel or VITS latent)",
    )
    add_voice_flags(parser)
    add_weights_flags(parser, seed=AcousticStage.default_seed)
    add_flag(
        parser,
        "chunk-frames",
        int,
        STREAM_WINDOW_FRAMES,
        "default mel frames per streamed chunk (callers usually say)",
    )
    config = parse_config("acoustic", parser, argv)
    entries, default = served_voices(config)
    stage = VoiceRouter("acoustic", {e.name: voice_stage(e, config) for e in entries}, default)

    def register(server: grpc.Server, runtime: StageRuntime) -> list[str]:
        servicer = AcousticServicer(runtime, stage, config.extra["chunk_frames"])
        acoustic_pb2_grpc.add_AcousticModelServicer_to_server(servicer, server)
        return [acoustic_pb2.DESCRIPTOR.services_by_name["AcousticModel"].full_name]

    bound_kernel_cache()  # a new input length per text (services/runtime/memory.py)
    return serve(config, stage, register)


if __name__ == "__main__":
    sys.exit(main())
