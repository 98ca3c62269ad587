"""The acoustic stage of a VITS voice: prior + durations -> frame-rate latent.

Expands the prior (mean, log-scale) by the integer durations, samples it with the voice's
``noise_scale`` and the sentence's seed, and runs the normalising flow in reverse
(:class:`services.vits.parts.VitsAcousticModel`): ``[C, frames]``, C = 192 for Piper voices,
what the vocoder stage's decoder turns into audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.acoustic.stage import check_features
from services.runtime.device import synchronize
from services.vits.parts import VitsAcousticModel
from services.vits.stage import VitsStage, gaussian


@dataclass
class VitsAcousticInput:
    """One request's validated input: prior features [T, 2C] (mean channels, then
    log-scale), durations [T] in frames, its speaker and the seed of its noise."""

    features: torch.Tensor
    durations: torch.Tensor
    speaker_id: int
    seed: int


class VitsAcousticStage(VitsStage[VitsAcousticModel]):
    """Prior expansion + sampling + reverse flow for one voice folder."""

    name = "acoustic"
    part = "acoustic"

    @property
    def channels(self) -> int:
        """Channels of the output latent."""
        return self.config.latent_channels

    def warmup(self) -> None:
        for n in (8, 64):
            features = torch.zeros(n, 2 * self.channels)
            durations = torch.full((n,), 4, dtype=torch.int32)
            self.execute([self.make_input(features, durations, 0, 0)])

    def validate(self, features: torch.Tensor, durations: torch.Tensor) -> None:
        """Reject inputs the model cannot take, with messages naming the problem."""
        check_features(features, durations, 2 * self.channels)

    def make_input(
        self, features: torch.Tensor, durations: torch.Tensor, speaker_id: int, seed: int
    ) -> VitsAcousticInput:
        """One request's model input (validate first)."""
        return VitsAcousticInput(features, durations, self.check_speaker(speaker_id), seed)

    @torch.inference_mode()
    def execute(self, requests: list[VitsAcousticInput]) -> list[torch.Tensor]:
        """Validated inputs -> one latent [C, frames_i] each (float32, CPU). One padded
        batch; each row's prior noise comes from its own seed, so rows are independent."""
        assert self.model is not None
        c = self.channels
        features = torch.nn.utils.rnn.pad_sequence(
            [r.features.float() for r in requests], batch_first=True
        ).transpose(1, 2)
        durations = torch.nn.utils.rnn.pad_sequence(
            [r.durations.to(torch.int64) for r in requests], batch_first=True
        )
        frames = [int(r.durations.sum()) for r in requests]
        noise = torch.zeros(len(requests), c, max(frames))
        for i, r in enumerate(requests):
            noise[i, :, : frames[i]] = gaussian((c, frames[i]), r.seed)
        to = {"device": self.device, "dtype": self.dtype}
        z, _ = self.model(
            features[:, :c].to(**to),
            features[:, c:].to(**to),
            durations.to(self.device),
            noise.to(**to),
            torch.full((len(requests),), self.config.inference.noise_scale, **to),
            self.speaker_ids([r.speaker_id for r in requests]),
        )
        synchronize(self.device)
        z = z.float().cpu()
        return [z[i, :, : frames[i]].contiguous() for i in range(len(requests))]

    @staticmethod
    def batch_key(request: VitsAcousticInput) -> None:
        return None

    @staticmethod
    def batch_length(request: VitsAcousticInput) -> int:
        """Padded length of a request's row: its frames."""
        return int(request.durations.sum())
