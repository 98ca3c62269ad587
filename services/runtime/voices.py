"""`VoiceRouter`: one model stage serving several voices.

Each voice has its own single-voice stage (its model, weights, device placement); the router
is the `Stage` the runtime schedules. A payload is wrapped in :class:`Routed` with its voice,
the batch key starts with the voice, so the scheduler never puts two voices in one batch,
and `execute` hands each batch to its voice's stage unchanged (Triton-style: one outcome per
request, in order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.runtime.errors import InvalidArgument
from services.runtime.stage import ModelDescription, Stage
from services.runtime.voice import check_voice

P = TypeVar("P")


def check_speaker(speaker_id: int, speakers: int) -> int:
    """`speaker_id` if a voice with `speakers` speakers (0: a single speaker) has it."""
    count = max(1, speakers)
    if not 0 <= speaker_id < count:
        raise InvalidArgument(
            f"speaker_id {speaker_id} out of range: this voice has {count} speaker(s)"
        )
    return speaker_id


@dataclass(frozen=True)
class Routed(Generic[P]):
    """A stage input and the voice whose model must run it."""

    voice: str
    payload: P


class VoiceRouter:
    """A `Stage` over one single-voice stage per voice (see module docstring).

    Args:
        name: The stage's name ("frontend", "acoustic", "vocoder").
        stages: Voice name -> that voice's stage, in catalogue order.
        default_voice: The voice an empty voice name means (must be in `stages`).
    """

    def __init__(self, name: str, stages: dict[str, Stage], default_voice: str) -> None:
        if not stages:
            raise ValueError(f"{name}: no voices to serve")
        if default_voice not in stages:
            raise ValueError(
                f"{name}: default voice {default_voice!r} is not among the served voices "
                f"({', '.join(stages)})"
            )
        self.name = name
        self.default_voice = default_voice
        self._stages = stages

    @property
    def voices(self) -> tuple[str, ...]:
        """The voices served: the default first, then catalogue order (the gateway takes
        the first voice its stages list as the default)."""
        others = (v for v in self._stages if v != self.default_voice)
        return (self.default_voice, *others)

    @property
    def device(self) -> Any:
        """The default voice's device (what phase spans synchronise on)."""
        return getattr(self._stages[self.default_voice], "device", None)

    def resolve(self, voice: str) -> str:
        """The served voice a request's voice field names ("" = the default voice)."""
        check_voice(voice, set(self._stages))
        return voice or self.default_voice

    def stage(self, voice: str) -> Any:
        """The single-voice stage serving `voice` (resolved as :meth:`resolve` does)."""
        return self._stages[self.resolve(voice)]

    # -- Stage lifecycle -----------------------------------------------------------------------

    def load(self) -> None:
        for stage in self._stages.values():
            stage.load()

    def warmup(self) -> None:
        for stage in self._stages.values():
            stage.warmup()

    def finalize(self) -> None:
        for stage in self._stages.values():
            stage.finalize()

    def describe(self) -> ModelDescription:
        """The default voice's description, listing every voice, with one entry per voice."""
        per_voice = tuple(self._stages[v].describe() for v in self.voices)
        return dataclasses.replace(per_voice[0], voices=self.voices, per_voice=per_voice)

    # -- the scheduler's interface -------------------------------------------------------------

    def execute(self, requests: list[Routed[Any]]) -> Sequence[Any]:
        """Run each voice's requests on its own stage; outputs in input order.

        The scheduler batches equal keys only, so a batch holds one voice; grouping here
        keeps `execute` correct for any caller."""
        out: list[Any] = [None] * len(requests)
        by_voice: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            by_voice.setdefault(request.voice, []).append(i)
        for voice, indices in by_voice.items():
            outputs = self._stages[voice].execute([requests[i].payload for i in indices])
            for i, output in zip(indices, outputs, strict=True):
                out[i] = output
        return out

    def batch_key(self, request: Routed[Any]) -> Hashable:
        """Voice first: batches never mix voices; then the voice's own shape bucket."""
        return (request.voice, self._stages[request.voice].batch_key(request.payload))

    def batch_length(self, request: Routed[Any]) -> int:
        return self._stages[request.voice].batch_length(request.payload)
