"""The acoustic stage's torch model: length regulation + mel decoder.

Input: the frontend's phoneme-level features [T, D] and integer durations [T] (mel frames).
The length regulator repeats each phoneme's features for its duration; a conv decoder turns
the frame-level sequence into an 80-bin natural-log mel spectrogram, HiFi-GAN's convention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from services.frontend.model import ConvBlock, sinusoidal_positions


@dataclass(frozen=True)
class AcousticModelConfig:
    d_model: int = 192
    decoder_layers: int = 6
    decoder_kernel: int = 5
    dropout: float = 0.1
    n_mels: int = 80
    # Untrained output sits near a quiet log-mel level instead of 0 (= loud noise).
    initial_log_mel: float = -6.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def length_regulate(features: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
    """[T, D] phoneme features, [T] frames -> [sum(durations), D] frame features."""
    return torch.repeat_interleave(features, durations.to(torch.long).clamp(min=0), dim=0)


class MelDecoder(nn.Module):
    """Frame features [B, N, D] -> log-mel [B, N, n_mels]."""

    def __init__(self, cfg: AcousticModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvBlock(cfg.d_model, cfg.decoder_kernel, cfg.dropout)
            for _ in range(cfg.decoder_layers)
        )
        self.proj = nn.Linear(cfg.d_model, cfg.n_mels)

    @property
    def receptive_field(self) -> int:
        """Frames of context on each side that influence one output frame."""
        return sum(b.conv.kernel_size[0] // 2 for b in self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(x.shape[0], x.shape[1], 1, device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return self.proj(x)


class AcousticModel(nn.Module):
    """(features [T, D], durations [T]) -> log-mel [n_mels, frames]."""

    def __init__(self, cfg: AcousticModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or AcousticModelConfig()
        self.decoder = MelDecoder(self.config)

    def reset_parameters(self, seed: int) -> None:
        """Deterministic initialisation for the untrained voice."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                p.data = torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel())
            elif "norm" in name and name.endswith("weight"):
                p.data.fill_(1.0)
            else:
                p.data.zero_()
        with torch.no_grad():
            self.decoder.proj.weight.mul_(0.1)
            self.decoder.proj.bias.fill_(self.config.initial_log_mel)

    def forward(self, features: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        frames = length_regulate(features, durations)
        frames = frames + sinusoidal_positions(frames.shape[0], frames.shape[1], frames.device).to(
            frames.dtype
        )
        mel = self.decoder(frames.unsqueeze(0))[0]
        return mel.transpose(0, 1)
