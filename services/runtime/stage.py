"""The interface every model stage implements (in the spirit of Triton's python backend).

A stage owns only its model: loading, warm-up and inference on torch tensors. The runtime
owns threads, queues, health, gRPC and telemetry around it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ModelDescription:
    """What a stage reports about its model (served as voxline.v1.ModelInfo)."""

    stage: str
    model_name: str
    model_version: str
    trained: bool
    device: str
    dtype: str
    voices: tuple[str, ...]
    sample_rate_hz: int
    weights_source: str
    #: Hex sha256 of the loaded weights file; empty for a seeded initialisation.
    weights_sha256: str = ""
    #: The model family: "fastspeech" (the distilled student) or "vits" (Piper voices).
    architecture: str = "fastspeech"
    #: Output samples per frame of the frame-rate features.
    hop_length: int = 256
    #: Channels of the frame-rate features (acoustic output, vocoder input).
    feature_channels: int = 80
    language_code: str = "en-US"
    #: Speaker names in id order; empty for a single-speaker voice.
    speakers: tuple[str, ...] = ()
    #: One description per voice when the stage serves several (services/runtime/voices.py);
    #: empty for a single-voice stage, which describes itself.
    per_voice: tuple[ModelDescription, ...] = ()

    def voice_models(self) -> tuple[ModelDescription, ...]:
        """A description per voice held (this one alone for a single-voice stage)."""
        return self.per_voice or (self,)


class Stage(Protocol):
    """A model stage: its lifecycle, and one batch-shaped entry point for its model.

    `execute` takes a *list* of inputs (one per request, already validated) and returns one
    output per input, in order, so batching never changes the interface (a batch of one is
    the trivial case). The runtime's scheduler (services/runtime/scheduler.py) owns when and
    with whom an input runs; `batch_key` says which inputs may share a batch (equal keys)
    and `batch_length` an input's length along the padded axis.
    """

    name: str

    def load(self) -> None:
        """Build the model and load its weights onto the selected device."""

    def warmup(self) -> None:
        """Run representative inputs once so the first real request is not slow."""

    def finalize(self) -> None:
        """Release the model (called after the server has drained)."""

    def describe(self) -> ModelDescription:
        """Model name, version, device, precision, voices; valid after `load`."""

    def execute(self, requests: list[Any]) -> Sequence[Any]:
        """Run the model once for all `requests`; one output per request, in order. An
        exception in place of an output fails that request alone; an exception raised fails
        no batch-mate either (the scheduler runs each request again alone)."""

    def batch_key(self, request: Any) -> Hashable:
        """Inputs with equal keys may share a batch (a shape bucket; None: any)."""

    def batch_length(self, request: Any) -> int:
        """The input's length along the padded axis (for padding-waste telemetry)."""
