"""The three parts of a VITS voice, one per Voxline stage.

- `VitsFrontendModel`: ids -> prior (``m_p``, ``logs_p``) and integer durations per id;
- `VitsAcousticModel`: prior + durations -> the decoder's latent ``z`` at the frame rate;
- `VitsDecoderModel`: ``z`` -> audio.

Noise is an input, not drawn inside: each request brings its own (from its own seeded
generator), so a row of a batch computes exactly what it computes alone, and scales are per
row (``[B]``) so one batch can mix requests. Each part that conditions on the speaker holds
its own copy of the (small) speaker table ``emb_g``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from services.vits.config import VitsConfig
from services.vits.decoder import Generator
from services.vits.duration import StochasticDurationPredictor
from services.vits.flow import ResidualCouplingFlow
from services.vits.modules import sequence_mask, speaker_embedding
from services.vits.text_encoder import TextEncoder

__all__ = [
    "VitsAcousticModel",
    "VitsDecoderModel",
    "VitsFrontendModel",
    "build_part",
    "expand_by_durations",
]


def _speaker_table(config: VitsConfig) -> nn.Embedding | None:
    return nn.Embedding(config.n_speakers, config.gin_channels) if config.multi_speaker else None


def _per_row(scale: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, 1]``, to broadcast over channels and time."""
    return scale.reshape(-1, 1, 1)


class VitsFrontendModel(nn.Module):
    """Text encoder + stochastic duration predictor (``enc_p``, ``dp`` [, ``emb_g``])."""

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        self.config = config
        self.enc_p = TextEncoder(config)
        self.dp = StochasticDurationPredictor(config)
        self.emb_g = _speaker_table(config)

    def forward(
        self,
        ids: Tensor,
        lengths: Tensor,
        dp_noise: Tensor,
        noise_w: Tensor,
        length_scale: Tensor,
        sid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``ids [B, T]`` int64, ``lengths [B]``, standard-normal ``dp_noise [B, 2, T]``,
        ``noise_w [B]``, ``length_scale [B]``, ``sid [B]`` or None ->
        ``m_p [B, C, T]``, ``logs_p [B, C, T]``, ``durations [B, T]`` int64 frames
        (``ceil(exp(logw) * length_scale)``, VITS's ``w_ceil``; 0 on padding)."""
        g = speaker_embedding(self.emb_g, sid)
        x, m_p, logs_p, x_mask = self.enc_p(ids, lengths)
        logw = self.dp(x, x_mask, dp_noise * _per_row(noise_w), g)
        w = torch.exp(logw) * x_mask * _per_row(length_scale)
        return m_p, logs_p, torch.ceil(w).squeeze(1).long()


def expand_by_durations(stats: Tensor, durations: Tensor, frames: int | Tensor) -> Tensor:
    """Repeat each id's column of ``stats [B, C, T]`` for its ``durations [B, T]`` frames ->
    ``[B, C, frames]``, 0 past each row's total.

    Frame f belongs to the id whose cumulative duration first exceeds f (ids lasting 0
    frames are skipped). Comparisons + gather, not a [T, frames] one-hot matmul: cheaper, and
    exact.
    """
    ends = torch.cumsum(durations, dim=1)  # [B, T]
    steps = torch.arange(frames, device=durations.device)
    owner = (ends[:, :, None] <= steps[None, None, :]).sum(dim=1)  # [B, frames]
    valid = (owner < durations.shape[1]).unsqueeze(1)
    index = owner.clamp(max=durations.shape[1] - 1).unsqueeze(1).expand(-1, stats.shape[1], -1)
    return stats.gather(2, index) * valid


class VitsAcousticModel(nn.Module):
    """Expand the prior to frames, sample it, run the flow backwards (``flow`` [, ``emb_g``])."""

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        self.config = config
        self.flow = ResidualCouplingFlow(config)
        self.emb_g = _speaker_table(config)

    def forward(
        self,
        m_p: Tensor,
        logs_p: Tensor,
        durations: Tensor,
        prior_noise: Tensor,
        noise_scale: Tensor,
        sid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``m_p``/``logs_p [B, C, T]``, ``durations [B, T]``, standard-normal
        ``prior_noise [B, C, F']`` with ``F' >= F`` (``F`` = the longest row's frames; extra
        frames are ignored), ``noise_scale [B]``, ``sid [B]`` or None ->
        ``z [B, C, F]`` (0 past each row's length), ``frame_lengths [B]`` int64."""
        g = speaker_embedding(self.emb_g, sid)
        # At least one frame, as VITS does, so an all-zero-duration input still decodes.
        frame_lengths = durations.sum(dim=1).clamp(min=1)
        frames = int(frame_lengths.max())
        if prior_noise.shape[2] < frames:
            raise ValueError(f"prior_noise has {prior_noise.shape[2]} frames, need {frames}")
        y_mask = sequence_mask(frame_lengths, frames)
        m = expand_by_durations(m_p, durations, frames)
        logs = expand_by_durations(logs_p, durations, frames)
        z_p = m + prior_noise[:, :, :frames] * torch.exp(logs) * _per_row(noise_scale)
        z = self.flow(z_p * y_mask, y_mask, g)
        return z * y_mask, frame_lengths


class VitsDecoderModel(nn.Module):
    """HiFi-GAN decoder (``dec`` [, ``emb_g``])."""

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        self.config = config
        self.dec = Generator(config)
        self.emb_g = _speaker_table(config)

    def forward(
        self, z: Tensor, sid: Tensor | None = None, frame_lengths: Tensor | None = None
    ) -> Tensor:
        """``z [B, C, F]``, ``sid [B]`` or None -> audio ``[B, F * hop]`` (tanh output).

        Pass ``frame_lengths [B]`` when rows are ragged: each row then equals the row decoded
        alone (and is 0 past its end); without it every row is taken to be F frames long.
        """
        g = speaker_embedding(self.emb_g, sid)
        return self.dec(z, g, frame_lengths).squeeze(1)


PARTS: dict[str, type[nn.Module]] = {
    "frontend": VitsFrontendModel,
    "acoustic": VitsAcousticModel,
    "vocoder": VitsDecoderModel,
}


def build_part(stage: str, config: VitsConfig) -> nn.Module:
    """A part with untrained weights, in eval mode: ``stage`` is frontend/acoustic/vocoder."""
    try:
        return PARTS[stage](config).eval()
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(PARTS)}") from None
