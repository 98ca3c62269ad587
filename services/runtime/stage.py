"""The interface every model stage implements (in the spirit of Triton's python backend).

A stage owns only its model: loading, warm-up and inference on torch tensors. The runtime
owns threads, queues, health, gRPC and telemetry around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
    """Lifecycle of a model stage. `infer`-style methods are stage-specific and typed."""

    name: str

    def load(self) -> None:
        """Build the model and load its weights onto the selected device."""

    def warmup(self) -> None:
        """Run representative inputs once so the first real request is not slow."""

    def finalize(self) -> None:
        """Release the model (called after the server has drained)."""

    def describe(self) -> ModelDescription:
        """Model name, version, device, precision, voices; valid after `load`."""
