"""Text -> audio through Voxline's three stages in one process: the reference path.

One screen shows what the services do between them, without gRPC, threads or scheduling:

    text --frontend--> sentences of phoneme ids --encoder--> features [T, C] + durations [T]
         --acoustic--> frame-rate features [C', frames] --vocoder (windows)--> int16 PCM

Each stage is the same class the services load (`services/{frontend,acoustic,vocoder}`), called
through the same batch-shaped `execute([input]) -> [output]`; the vocoder runs the same
streaming windows (`stream.plan`), so the audio equals what the stack sends. The benchmarks'
in-process baseline (`bench.load.InProcess`) is this path; docs/architecture.md starts here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from services.vocoder.stage import to_pcm16
from services.voices.catalog import VoiceEntry


@dataclass
class Stages:
    """A voice's three stages, loaded and warmed."""

    frontend: Any
    acoustic: Any
    vocoder: Any


def load_stages(entry: VoiceEntry, vocoder: str = "auto") -> Stages:
    """Build, load and warm the stages of catalogue voice `entry` (`vocoder`: the student
    voice's vocoder choice, `auto` | `fast` | `hifigan`)."""
    if entry.architecture == "vits":
        from services.acoustic.vits_stage import VitsAcousticStage
        from services.frontend.vits_stage import VitsFrontendStage
        from services.vocoder.vits_stage import VitsVocoderStage

        parts = (VitsFrontendStage, VitsAcousticStage, VitsVocoderStage)
        stages = Stages(*(part(entry.folder) for part in parts))
    else:
        from services.acoustic.stage import AcousticStage
        from services.frontend.stage import FrontendStage
        from services.vocoder.stage import VocoderStage, resolve_vocoder

        chosen = resolve_vocoder(vocoder)  # the stage's device: auto
        fast = str(entry.folder / "vocoder-fast.safetensors") if chosen == "fast" else None
        stages = Stages(
            FrontendStage(checkpoint=str(entry.folder / "frontend.safetensors")),
            AcousticStage(checkpoint=str(entry.folder / "acoustic.safetensors")),
            VocoderStage(vocoder=chosen, checkpoint=fast),
        )
    for stage in (stages.frontend, stages.acoustic, stages.vocoder):
        stage.load()
        stage.warmup()
    return stages


def synthesize(
    stages: Stages, text: str, seed: int = 0, whole_sentences: bool = False
) -> Iterator[torch.Tensor]:
    """int16 PCM pieces [samples] in playback order, each as soon as it is vocoded (one per
    streaming window; one per sentence with `whole_sentences`, as Piper vocodes)."""
    frontend, acoustic, vocoder = stages.frontend, stages.acoustic, stages.vocoder
    for prepared in frontend.prepare_iter(text):
        ((sentence,),) = frontend.execute([frontend.make_input([prepared], 1.0, 0, seed)])
        features = acoustic.make_input(sentence.features, sentence.durations, 0, sentence.seed)
        (frames,) = acoustic.execute([features])
        if whole_sentences:
            (audio,) = vocoder.execute([vocoder.window_input(frames)])
            yield to_pcm16(audio)
            continue
        stream = vocoder.stream()
        for window in [*stream.plan(frames), *stream.plan_flush()]:
            yield stream.finish([window], vocoder.execute([stream.window_input(window)]))
