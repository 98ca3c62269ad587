"""gRPC service for the frontend stage (voxline.v1.TextFrontend)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Sequence

import grpc
from voxline.v1 import frontend_pb2, frontend_pb2_grpc

from services.frontend.stage import (
    MODEL_VERSION,
    EncodedSentence,
    FrontendInput,
    FrontendStage,
)
from services.runtime.config import add_flag, build_parser, parse_config
from services.runtime.errors import InvalidArgument
from services.runtime.memory import bound_kernel_cache
from services.runtime.rpc import rpc_method
from services.runtime.server import serve
from services.runtime.stage_runtime import StageRuntime
from services.runtime.tensors import to_proto
from services.runtime.voice import (
    HOP_LENGTH,
    MAX_TEXT_CHARS,
    SAMPLE_RATE_HZ,
    add_weights_flags,
    check_voice,
    stage_options,
)
from telemetry import names

log = logging.getLogger("voxline.frontend")


class TextFrontendServicer(frontend_pb2_grpc.TextFrontendServicer):
    def __init__(self, runtime: StageRuntime, stage: FrontendStage, max_text_chars: int) -> None:
        self.runtime = runtime
        self._stage = stage
        self._max_text_chars = max_text_chars

    def _check(self, request: frontend_pb2.AnalyzeRequest) -> float:
        """Validate a request (the caller's text is never echoed); returns the speaking rate."""
        self.runtime.require_ready()
        self.runtime.annotate(
            {**self.runtime.model_attributes(), names.ATTR_TEXT_LENGTH: len(request.text)}
        )
        check_voice(request.voice)
        if len(request.text) > self._max_text_chars:
            raise InvalidArgument(
                f"text is {len(request.text)} characters; the limit is {self._max_text_chars}"
            )
        rate = request.speaking_rate or 1.0
        if not math.isfinite(rate) or rate <= 0:
            raise InvalidArgument(f"speaking_rate must be > 0, got {rate}")
        return rate

    @staticmethod
    def _sentence(s: EncodedSentence) -> frontend_pb2.Sentence:
        return frontend_pb2.Sentence(
            index=s.index,
            phoneme_ids=to_proto(s.phoneme_ids),
            features=to_proto(s.features),
            durations=to_proto(s.durations),
            num_frames=int(s.durations.sum()),
            num_chars=s.num_chars,
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
            rate = self._check(request)
            start = self.runtime.playback_start(context)
            prepared = self._stage.prepare(request.text)
        encoded = self.runtime.infer(context, FrontendInput(prepared, rate), urgency=start)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            response = frontend_pb2.AnalyzeResponse(
                sentences=[self._sentence(s) for s in encoded], model_version=MODEL_VERSION
            )
            self._annotate(encoded)
        log.debug("analyzed", extra={"sentences": len(encoded), "request_id": request.request_id})
        return response

    @rpc_method
    def AnalyzeStream(
        self, request: frontend_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> Iterator[frontend_pb2.Sentence]:
        with self.runtime.phase(names.PHASE_PREPROCESS):
            rate = self._check(request)
            start = self.runtime.playback_start(context)
            sentences = self._stage.prepare_iter(request.text)
            first = next(sentences)  # raises InvalidArgument for an unspeakable text
        # The first sentence alone (its audio is due now), then all the others in one batch
        # (due once the first has played: the listener has time).
        head = self.runtime.infer(context, FrontendInput([first], rate), urgency=start)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            message = self._sentence(head[0])
        yield from self.runtime.send(message)
        with self.runtime.phase(names.PHASE_PREPROCESS):
            rest = list(sentences)
        encoded = list(head)
        if rest:
            due = start + int(head[0].durations.sum()) * HOP_LENGTH / SAMPLE_RATE_HZ
            (tail,) = self.runtime.infer_many(context, [FrontendInput(rest, rate)], [due])
            encoded += tail
            for s in tail:
                with self.runtime.phase(names.PHASE_POSTPROCESS):
                    message = self._sentence(s)
                yield from self.runtime.send(message)
        with self.runtime.phase(names.PHASE_POSTPROCESS):
            self._annotate(encoded)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("frontend", "Voxline text frontend: text -> phonemes -> features")
    add_weights_flags(parser, seed=FrontendStage.default_seed)
    add_flag(parser, "max-text-chars", int, MAX_TEXT_CHARS, "longest accepted text")
    config = parse_config("frontend", parser, argv)
    stage = FrontendStage(**stage_options(config))

    def register(server: grpc.Server, runtime: StageRuntime) -> list[str]:
        servicer = TextFrontendServicer(runtime, stage, config.extra["max_text_chars"])
        frontend_pb2_grpc.add_TextFrontendServicer_to_server(servicer, server)
        return [frontend_pb2.DESCRIPTOR.services_by_name["TextFrontend"].full_name]

    bound_kernel_cache()  # a new input length per text (services/runtime/memory.py)
    return serve(config, stage, register)


if __name__ == "__main__":
    sys.exit(main())
