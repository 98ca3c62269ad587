"""The acoustic stage: phoneme features + durations -> log-mel spectrogram."""

from __future__ import annotations

import torch

from services.acoustic.model import AcousticModel
from services.runtime.device import synchronize
from services.runtime.errors import InvalidArgument
from services.runtime.model_stage import TorchModelStage
from services.runtime.voice import N_MELS

MODEL_NAME = "voxline-acoustic-conv"
MODEL_VERSION = "0.1.0"
# Longest mel one request may ask for (~3 min of audio): bounds memory per call.
MAX_FRAMES = 16_000


class AcousticStage(TorchModelStage[AcousticModel]):
    """Length regulation + conv mel decoder."""

    name = "acoustic"
    model_name = MODEL_NAME
    model_version = MODEL_VERSION

    def __init__(
        self,
        device: str = "auto",
        dtype: str = "auto",
        checkpoint: str | None = None,
        seed: int = 4321,
    ) -> None:
        super().__init__(device, dtype, checkpoint, seed)

    def build_model(self) -> AcousticModel:
        return AcousticModel()

    @property
    def feature_dim(self) -> int:
        return (self.model or AcousticModel()).config.d_model

    def warmup(self) -> None:
        d = self.feature_dim
        for n in (8, 64):
            self.generate(torch.zeros(n, d), torch.full((n,), 4, dtype=torch.int32))

    def validate(self, features: torch.Tensor, durations: torch.Tensor) -> None:
        """Reject inputs the model cannot take, with messages naming the problem."""
        if features.shape[1] != self.feature_dim:
            raise InvalidArgument(
                f"features: expected {self.feature_dim} channels, got {features.shape[1]}"
            )
        if features.shape[0] != durations.shape[0]:
            raise InvalidArgument(
                f"features has {features.shape[0]} phonemes but durations has {durations.shape[0]}"
            )
        if features.shape[0] == 0:
            raise InvalidArgument("empty phoneme sequence")
        if bool((durations < 0).any()):
            raise InvalidArgument("durations must be >= 0")
        total = int(durations.sum())
        if total == 0:
            raise InvalidArgument("durations sum to 0 frames")
        if total > MAX_FRAMES:
            raise InvalidArgument(f"{total} frames requested; the limit is {MAX_FRAMES}")
        if not bool(torch.isfinite(features).all()):
            raise InvalidArgument("features contain NaN or infinity")

    @torch.inference_mode()
    def generate(self, features: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """[T, D] features + [T] frames -> [80, frames] float32 log-mel on CPU."""
        assert self.model is not None
        self.validate(features, durations)
        mel = self.model(features.to(self.device, self.dtype), durations.to(self.device))
        synchronize(self.device)
        mel = mel.float().cpu()
        assert mel.shape[0] == N_MELS
        return mel
