"""gRPC service for the frontend stage (voxline.v1.TextFrontend)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence

import grpc
from voxline.v1 import frontend_pb2, frontend_pb2_grpc

from services.frontend.stage import MODEL_VERSION, FrontendInput, FrontendStage
from services.runtime.config import add_flag, build_parser, parse_config
from services.runtime.errors import InvalidArgument
from services.runtime.server import StageRuntime, rpc_method, serve
from services.runtime.tensors import to_proto
from services.runtime.voice import check_voice, resolve_checkpoint
from telemetry import names

log = logging.getLogger("voxline.frontend")


class TextFrontendServicer(frontend_pb2_grpc.TextFrontendServicer):
    def __init__(self, runtime: StageRuntime, stage: FrontendStage, max_text_chars: int) -> None:
        self._rt = runtime
        self._stage = stage
        self._max_text_chars = max_text_chars

    @rpc_method
    def Analyze(
        self, request: frontend_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> frontend_pb2.AnalyzeResponse:
        with self._rt.phase(names.PHASE_PREPROCESS):
            self._rt.require_ready()
            self._rt.annotate(
                {**self._rt.model_attributes(), names.ATTR_TEXT_LENGTH: len(request.text)}
            )
            check_voice(request.voice)
            if len(request.text) > self._max_text_chars:
                raise InvalidArgument(
                    f"text is {len(request.text)} characters; the limit is {self._max_text_chars}"
                )
            rate = request.speaking_rate or 1.0
            if not math.isfinite(rate) or rate <= 0:
                raise InvalidArgument(f"speaking_rate must be > 0, got {rate}")
            start = self._rt.playback_start(context)
            prepared = self._stage.prepare(request.text)
            tokens = sum(len(s.phoneme_ids) for s in prepared)
        encoded = self._rt.infer(context, FrontendInput(prepared, rate), urgency=start)
        with self._rt.phase(names.PHASE_POSTPROCESS):
            response = frontend_pb2.AnalyzeResponse(model_version=MODEL_VERSION)
            for s in encoded:
                response.sentences.append(
                    frontend_pb2.Sentence(
                        index=s.index,
                        phoneme_ids=to_proto(s.phoneme_ids),
                        features=to_proto(s.features),
                        durations=to_proto(s.durations),
                        num_frames=int(s.durations.sum()),
                        num_chars=s.num_chars,
                    )
                )
            self._rt.annotate(
                {
                    names.ATTR_SENTENCE_COUNT: len(encoded),
                    names.ATTR_TOKEN_COUNT: tokens,
                    names.ATTR_MEL_FRAMES: sum(s.num_frames for s in response.sentences),
                }
            )
        log.debug("analyzed", extra={"sentences": len(encoded), "request_id": request.request_id})
        return response


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("frontend", "Voxline text frontend: text -> phonemes -> features")
    add_flag(
        parser,
        "checkpoint",
        str,
        "auto",
        "weights: auto (the shipped voice; VOXLINE_MODEL_DIR overrides its folder) | "
        "none (seeded, untrained) | PATH",
    )
    add_flag(parser, "seed", int, 1234, "seed of the untrained initialisation")
    add_flag(parser, "max-text-chars", int, 5000, "longest accepted text")
    config = parse_config("frontend", parser, argv)
    stage = FrontendStage(
        device=config.device,
        dtype=config.dtype,
        checkpoint=resolve_checkpoint(config.extra["checkpoint"], "frontend"),
        seed=config.extra["seed"],
    )

    def register(server: grpc.Server, runtime: StageRuntime) -> list[str]:
        servicer = TextFrontendServicer(runtime, stage, config.extra["max_text_chars"])
        frontend_pb2_grpc.add_TextFrontendServicer_to_server(servicer, server)
        return [frontend_pb2.DESCRIPTOR.services_by_name["TextFrontend"].full_name]

    return serve(config, stage, register)


if __name__ == "__main__":
    sys.exit(main())
