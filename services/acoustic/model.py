"""The acoustic stage's torch model: length regulation + mel decoder + postnet.

Input: the frontend's phoneme-level features [T, D] and integer durations [T] (mel frames).
The length regulator repeats each phoneme id's features for its duration and adds a small
projection of where each frame sits inside its phoneme (progress through it, frames since its
start and until its end, its length), so a conv stack can shape transitions within long
phonemes. A conv decoder turns the frame-level sequence into an 80-bin natural-log mel
spectrogram (HiFi-GAN's convention) and a Tacotron-2-style postnet adds a residual refinement
(FastSpeech 2 / FastPitch layout, convolution-only for CPU speed).

The trained weights (``services/voices/voxline-en-us/acoustic.safetensors``) come from the
``training`` package; `AcousticModelConfig`'s defaults are the architecture they were trained with.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from services.frontend.model import ConvBlock

# Features describing a frame's place inside its phoneme id (see `frame_positions`).
N_POSITION_FEATURES = 4
# Frames-since-start / frames-until-end saturate here (scaled to [0, 1]).
_POSITION_HORIZON = 10.0


@dataclass(frozen=True)
class AcousticModelConfig:
    d_model: int = 192
    decoder_layers: int = 6
    decoder_kernel: int = 5
    postnet_layers: int = 5
    postnet_channels: int = 192
    postnet_kernel: int = 5
    dropout: float = 0.1
    n_mels: int = 80
    # Untrained output sits near a quiet log-mel level instead of 0 (= loud noise).
    initial_log_mel: float = -6.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def length_regulate(features: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
    """[T, D] phoneme features, [T] frames -> [sum(durations), D] frame features."""
    return torch.repeat_interleave(features, durations.to(torch.long).clamp(min=0), dim=0)


def frame_positions(durations: torch.Tensor) -> torch.Tensor:
    """[T] frames per phoneme id -> [sum(durations), 4] within-phoneme position features.

    Per frame k of a phoneme lasting d frames: centred progress ``(k + 0.5) / d - 0.5``,
    frames since its start and until its end (saturating at 10, scaled to [0, 1]) and
    ``log(1 + d) / 3``.
    """
    d = durations.to(torch.long).clamp(min=0)
    total = int(d.sum())
    owner = torch.repeat_interleave(torch.arange(d.shape[0], device=d.device), d)
    starts = torch.cumsum(d, 0) - d
    k = (torch.arange(total, device=d.device) - starts[owner]).float()
    length = d[owner].float()
    return torch.stack(
        [
            (k + 0.5) / length - 0.5,
            torch.clamp(k, max=_POSITION_HORIZON) / _POSITION_HORIZON,
            torch.clamp(length - 1 - k, max=_POSITION_HORIZON) / _POSITION_HORIZON,
            torch.log1p(length) / 3.0,
        ],
        dim=1,
    )


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(x.shape[0], x.shape[1], 1, device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return self.proj(x)


class PostNet(nn.Module):
    """Residual mel refinement: convs (tanh between them) over [B, N, n_mels]."""

    def __init__(self, cfg: AcousticModelConfig) -> None:
        super().__init__()
        channels = [cfg.n_mels] + [cfg.postnet_channels] * (cfg.postnet_layers - 1) + [cfg.n_mels]
        self.convs = nn.ModuleList(
            nn.Conv1d(c_in, c_out, cfg.postnet_kernel, padding=cfg.postnet_kernel // 2)
            for c_in, c_out in itertools.pairwise(channels)
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask_cf = mask.transpose(1, 2)
        x = mel.transpose(1, 2) * mask_cf
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = self.dropout(torch.tanh(x)) * mask_cf
        return mel + x.transpose(1, 2) * mask


class AcousticModel(nn.Module):
    """(features [T, D], durations [T]) -> log-mel [n_mels, frames]."""

    def __init__(self, cfg: AcousticModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or AcousticModelConfig()
        self.position = nn.Linear(N_POSITION_FEATURES, self.config.d_model)
        self.decoder = MelDecoder(self.config)
        self.postnet = PostNet(self.config)

    def reset_parameters(self, seed: int) -> None:
        """Deterministic initialisation (the untrained voice, and the start of training)."""
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
            self.postnet.convs[-1].weight.mul_(0.01)  # starts as (nearly) the identity

    def expand(
        self, features: torch.Tensor, durations: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched length regulation: [B, T, D], [B, T] -> frames [B, N, D], mask [B, N, 1].

        Padding ids must have duration 0; N is the longest sentence's frame count.
        """
        rows = [
            length_regulate(f, d) + self.position(frame_positions(d).to(f.device, f.dtype))
            for f, d in zip(features, durations, strict=True)
        ]
        frames = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        steps = torch.arange(frames.shape[1], device=frames.device)[None, :]
        counts = torch.tensor([r.shape[0] for r in rows], device=frames.device)
        mask = (steps < counts[:, None]).unsqueeze(-1).to(frames.dtype)
        return frames, mask

    def decode(self, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features [B, N, D] -> (decoder mel, postnet mel), each [B, N, n_mels]."""
        mel = self.decoder(frames, mask) * mask
        return mel, self.postnet(mel, mask)

    def forward(self, features: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        frames, mask = self.expand(features.unsqueeze(0), durations.unsqueeze(0))
        _, mel = self.decode(frames, mask)
        return mel[0].transpose(0, 1)
