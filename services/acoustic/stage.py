"""The acoustic stage: phoneme features + durations -> log-mel spectrogram."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.acoustic.model import AcousticModel
from services.runtime.device import synchronize
from services.runtime.errors import InvalidArgument
from services.runtime.model_stage import TorchModelStage
from services.runtime.voice import MAX_MEL_FRAMES, N_MELS
from services.runtime.voices import check_speaker

MODEL_NAME = "voxline-acoustic-conv"
MODEL_VERSION = "0.1.0"


def check_features(features: torch.Tensor, durations: torch.Tensor, channels: int) -> None:
    """Reject phoneme features [T, channels] + durations [T] a model cannot take, with
    messages naming the problem (every voice's acoustic stage takes this shape)."""
    if features.shape[1] != channels:
        raise InvalidArgument(f"features: expected {channels} channels, got {features.shape[1]}")
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
    # Longest output one request may ask for (~3 min of audio): bounds memory per call.
    if total > MAX_MEL_FRAMES:
        raise InvalidArgument(f"{total} frames requested; the limit is {MAX_MEL_FRAMES}")
    if not bool(torch.isfinite(features).all()):
        raise InvalidArgument("features contain NaN or infinity")


@dataclass
class AcousticInput:
    """One request's validated input: phoneme features [T, D] and durations [T] in frames."""

    features: torch.Tensor
    durations: torch.Tensor


class AcousticStage(TorchModelStage[AcousticModel]):
    """Length regulation + conv mel decoder."""

    name = "acoustic"
    model_name = MODEL_NAME
    model_version = MODEL_VERSION
    default_seed = 4321

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
        check_features(features, durations, self.feature_dim)

    @property
    def channels(self) -> int:
        """Channels of the output features (mel bins)."""
        return N_MELS

    def make_input(
        self, features: torch.Tensor, durations: torch.Tensor, speaker_id: int, seed: int
    ) -> AcousticInput:
        """One request's model input (the student has one speaker and no sampling noise)."""
        check_speaker(speaker_id, speakers=1)
        return AcousticInput(features, durations)

    def generate(self, features: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """[T, D] features + [T] frames -> [80, frames] float32 log-mel on CPU (a batch of
        one; see :meth:`execute`)."""
        self.validate(features, durations)
        return self.execute([AcousticInput(features, durations)])[0]

    @torch.inference_mode()
    def execute(self, requests: list[AcousticInput]) -> list[torch.Tensor]:
        """Validated inputs of several requests -> one log-mel [80, frames_i] each (float32,
        CPU). One padded batch: padding phonemes last 0 frames, and the decoder and postnet
        mask the padded frames, so each row is computed as it would be alone."""
        assert self.model is not None
        features = torch.nn.utils.rnn.pad_sequence(
            [r.features.to(self.dtype) for r in requests], batch_first=True
        )
        durations = torch.nn.utils.rnn.pad_sequence(
            [r.durations.to(torch.int64) for r in requests], batch_first=True
        )
        frames, mask = self.model.expand(
            features.to(self.device, self.dtype), durations.to(self.device)
        )
        _, mel = self.model.decode(frames, mask)
        synchronize(self.device)
        mel = mel.float().cpu()
        out = []
        for i, r in enumerate(requests):
            row = mel[i, : int(r.durations.sum())].transpose(0, 1).contiguous()
            assert row.shape[0] == N_MELS
            out.append(row)
        return out

    @staticmethod
    def batch_length(request: AcousticInput) -> int:
        """Padded length of a request's row: its mel frames."""
        return int(request.durations.sum())
