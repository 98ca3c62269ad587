"""The frontend's torch model: phoneme encoder + duration predictor (FastSpeech-style).

Input: phoneme ids [B, T] in the teacher voice's map. Output: encoder features [B, T, D]
(one row per phoneme id, consumed by the acoustic stage) and log-durations [B, T]:
``log(1 + frames)`` per id, in mel frames (`durations_to_frames` inverts it). Convolution-only
so it is fast on CPU and trivially exportable.

The trained weights (``services/voices/voxline-en-us/frontend.safetensors``) are distilled from the
Piper teacher voice by the ``training`` package; the defaults of `FrontendModelConfig` are the
architecture those weights were trained with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FrontendModelConfig:
    n_symbols: int = 256
    d_model: int = 192
    encoder_layers: int = 6
    encoder_kernel: int = 5
    duration_layers: int = 2
    duration_kernel: int = 3
    dropout: float = 0.1
    # Untrained prior: a phoneme id lasts this many frames on average (~40 ms at hop 256;
    # ids alternate phoneme/pad, so ~80 ms per phoneme, a normal speaking rate).
    prior_frames_per_id: float = 3.5

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class ConvBlock(nn.Module):
    """Residual conv -> ReLU -> LayerNorm -> dropout over [B, T, D], masked at padding."""

    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.conv((x * mask).transpose(1, 2)).transpose(1, 2)
        return self.norm(x + self.dropout(torch.relu(y))) * mask


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """[length, dim] fixed sinusoidal position encodings (conv stacks need order cues)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class PhonemeEncoder(nn.Module):
    """Embedding + positions + a stack of residual conv blocks."""

    def __init__(self, cfg: FrontendModelConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.n_symbols, cfg.d_model, padding_idx=0)
        self.blocks = nn.ModuleList(
            ConvBlock(cfg.d_model, cfg.encoder_kernel, cfg.dropout)
            for _ in range(cfg.encoder_layers)
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        x = x + sinusoidal_positions(ids.shape[1], x.shape[-1], ids.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x


class DurationPredictor(nn.Module):
    """Predicts log(1 + frames) per phoneme id from encoder features."""

    def __init__(self, cfg: FrontendModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvBlock(cfg.d_model, cfg.duration_kernel, cfg.dropout)
            for _ in range(cfg.duration_layers)
        )
        self.proj = nn.Linear(cfg.d_model, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.proj(x).squeeze(-1) * mask.squeeze(-1)


class FrontendModel(nn.Module):
    """Phoneme ids -> (features [B, T, D], log-durations [B, T])."""

    def __init__(self, cfg: FrontendModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or FrontendModelConfig()
        self.encoder = PhonemeEncoder(self.config)
        self.duration = DurationPredictor(self.config)

    def reset_parameters(self, seed: int) -> None:
        """Deterministic initialisation (the untrained voice), with a sane duration prior."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.data = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            elif "norm" in name and name.endswith("weight"):
                p.data.fill_(1.0)
            else:
                p.data.zero_()
        with torch.no_grad():
            # Small output weights + a bias of log(prior) make untrained durations plausible.
            self.duration.proj.weight.mul_(0.01)
            self.duration.proj.bias.fill_(math.log1p(self.config.prior_frames_per_id))

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            mask = torch.ones(ids.shape[0], ids.shape[1], 1, device=ids.device)
        else:
            steps = torch.arange(ids.shape[1], device=ids.device)[None, :]
            mask = (steps < lengths[:, None]).unsqueeze(-1).float()
        mask = mask.to(self.encoder.embedding.weight.dtype)
        features = self.encoder(ids, mask)
        return features, self.duration(features, mask)


def durations_to_frames(log_durations: torch.Tensor, speaking_rate: float) -> torch.Tensor:
    """log(1 + frames) -> integer frames, faster speech for rate > 1. Never negative."""
    frames = torch.expm1(log_durations.float()).clamp(min=0) / speaking_rate
    return torch.clamp(torch.round(frames), min=0, max=100).to(torch.int32)
