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
        """Run the model once for all `requests`; one output per request, in order."""

    def batch_key(self, request: Any) -> Hashable:
        """Inputs with equal keys may share a batch (a shape bucket; None: any)."""

    def batch_length(self, request: Any) -> int:
        """The input's length along the padded axis (for padding-waste telemetry)."""
