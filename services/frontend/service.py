"""gRPC service for the frontend stage (voxline.v1.TextFrontend)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc
from voxline.v1 import frontend_pb2, frontend_pb2_grpc

from services.frontend.analyzer import PreparedSentence
from services.frontend.stage import EncodedSentence, FrontendStage
from services.frontend.vits_stage import VitsFrontendStage
from services.runtime.config import (
    ServiceConfig,
    add_dataclass_flags,
    build_parser,
    flag_field,
    parse_service,
)
from services.runtime.errors import InvalidArgument
from services.runtime.memory import bound_kernel_cache
from services.runtime.rpc import rpc_method
from services.runtime.server import serve
from services.runtime.stage_runtime import StageRuntime
from services.runtime.tensors import to_proto
from services.runtime.voice import (
    MAX_TEXT_CHARS,
    VoiceOptions,
    WeightsOptions,
    served_voices,
    stage_options,
)
from services.runtime.voices import Routed, VoiceRouter
from services.voices.catalog import VoiceEntry
from telemetry import names

log = logging.getLogger("voxline.frontend")


class TextFrontendServicer(frontend_pb2_grpc.TextFrontendServicer):
    def __init__(self, runtime: StageRuntime, voices: VoiceRouter, max_text_chars: int) -> None:
        self.runtime = runtime
        self._voices = voices
        self._max_text_chars = max_text_chars

    def _check(self, request: frontend_pb2.AnalyzeRequest) -> tuple[str, float]:
        """Validate a request (the caller's text is never echoed); returns the voice served
        and the speaking rate."""
        self.runtime.require_ready()
        self.runtime.annotate(
            {**self.runtime.model_attributes(), names.ATTR_TEXT_LENGTH: len(request.text)}
        )
        voice = self._voices.resolve(request.voice)
        if len(request.text) > self._max_text_chars:
            raise InvalidArgument(
                f"text is {len(request.text)} characters; the limit is {self._max_text_chars}"
            )
        rate = request.speaking_rate or 1.0
        if not math.isfinite(rate) or rate <= 0:
            raise InvalidArgument(f"speaking_rate must be > 0, got {rate:g}")
        return voice, rate

    def _input(
        self,
        voice: str,
        request: frontend_pb2.AnalyzeRequest,
        rate: float,
        sentences: list[PreparedSentence],
    ) -> Routed:
        """The voice's model input for `sentences` of one request, routed to that voice."""
        stage = self._voices.stage(voice)
        payload = stage.make_input(sentences, rate, request.speaker_id, request.seed)
        return Routed(voice, payload)

    @staticmethod
    def _sentence(s: EncodedSentence) -> frontend_pb2.Sentence:
        return frontend_pb2.Sentence(
            index=s.index,
            phoneme_ids=to_proto(s.phoneme_ids),
            features=to_proto(s.features),
            durations=to_proto(s.durations),
            num_frames=int(s.durations.sum()),
            num_chars=s.num_chars,
            seed=s.seed,
        )

    def _annotate(self, encoded: list[EncodedSentence]) -> None:
        self.runtime.annotate(
            {
                names.ATTR_SENTENCE_COUNT: len(encoded),
                names.ATTR_TOKEN_COUNT: sum(len(s.phoneme_ids) for s in encoded),
                names.ATTR_MEL_FRAMES: sum(int(s.durations.sum()) for s in encoded),
            }
        )

    @rpc_method
    def Analyze(
        self, request: frontend_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.AnalyzeResponse:
        with self.runtime.phase(names.PHASE_PREPROCESS):
            voice, rate = self._check(request)
            start = self.runtime.playback_start(context)
            stage = self._voices.stage(voice)
            payload = self._input(
                voice, request, rate, list(stage.prepare_iter(request.text, self._max_text_chars))
            )
        encoded = self.runtime.infer(context, payload, urgency=start)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            response = frontend_pb2.AnalyzeResponse(
                sentences=[self._sentence(s) for s in encoded], model_version=stage.model_version
            )
            self._annotate(encoded)
        log.debug("analyzed", extra={"sentences": len(encoded), "request_id": request.request_id})
        return response

    @rpc_method
    def AnalyzeStream(
        self, request: frontend_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> Iterator[frontend_pb2.Sentence]:
        with self.runtime.phase(names.PHASE_PREPROCESS):
            voice, rate = self._check(request)
            start = self.runtime.playback_start(context)
            stage = self._voices.stage(voice)
            sentences = stage.prepare_iter(request.text, self._max_text_chars)
            first = next(sentences)  # raises InvalidArgument for an unspeakable text
            head_input = self._input(voice, request, rate, [first])
        # The first sentence alone (its audio is due now), then all the others in one batch
        # (due once the first has played: the listener has time).
        head = self.runtime.infer(context, head_input, urgency=start)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            message = self._sentence(head[0])
        yield from self.runtime.send(message)
        with self.runtime.phase(names.PHASE_PREPROCESS):
            rest = list(sentences)
        encoded = list(head)
        if rest:
            due = start + int(head[0].durations.sum()) * stage.seconds_per_frame
            tail_input = self._input(voice, request, rate, rest)
            (tail,) = self.runtime.infer_many(context, [tail_input], [due])
            encoded += tail
            for s in tail:
                with self.runtime.phase(names.PHASE_POSTPROCESS):
                    message = self._sentence(s)
                yield from self.runtime.send(message)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            self._annotate(encoded)


@dataclass(frozen=True)
class FrontendOptions:
    """The frontend's own flags (generated by services/runtime/config.py, after the common
    ones)."""

    voice: VoiceOptions = field(default_factory=VoiceOptions)
    weights: WeightsOptions = field(
        default_factory=lambda: WeightsOptions(seed=FrontendStage.default_seed)
    )
    max_text_chars: int = flag_field(MAX_TEXT_CHARS, "longest accepted text")


def voice_stage(
    entry: VoiceEntry, config: ServiceConfig, weights: WeightsOptions
) -> FrontendStage | VitsFrontendStage:
    """The frontend stage of one catalogue voice."""
    if entry.architecture == "vits":
        return VitsFrontendStage(entry.folder, config.device, config.dtype)
    return FrontendStage(**stage_options(config, weights))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("frontend", "Voxline text frontend: text -> phonemes -> features")
    add_dataclass_flags(parser, FrontendOptions)
    config, options = parse_service("frontend", parser, FrontendOptions, argv)
    entries, default = served_voices(config.service, options.voice)
    voices = {e.name: voice_stage(e, config, options.weights) for e in entries}
    stage = VoiceRouter("frontend", voices, default)

    def register(server: grpc.Server, runtime: StageRuntime) -> list[str]:
        servicer = TextFrontendServicer(runtime, stage, options.max_text_chars)
        frontend_pb2_grpc.add_TextFrontendServicer_to_server(servicer, server)
        return [frontend_pb2.DESCRIPTOR.services_by_name["TextFrontend"].full_name]

    bound_kernel_cache()  # a new input length per text (services/runtime/memory.py)
    return serve(config, stage, register)


if __name__ == "__main__":
    sys.exit(main())
