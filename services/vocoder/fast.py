"""The fast CPU vocoder: ConvNeXt blocks at the mel frame rate and an inverse-STFT head.

HiFi-GAN V1 runs every convolution at the audio sample rate (256 samples per mel frame); on a
CPU it is ~99 % of the pipeline's compute. This model (in the style of Vocos, Siuzdak 2023)
never leaves the frame rate: it predicts, per mel frame, the log-magnitude and the phase of a
1024-point STFT frame, and one inverse STFT turns those into the waveform::

    mel [B, 80, T]
      -> Conv1d (k=7) -> LayerNorm                       [B, 384, T]
      -> 8 x ConvNeXt block (depthwise k=7, LayerNorm,
             384 -> 1152 -> 384 GELU, layer scale)       [B, 384, T]
      -> LayerNorm -> Linear 384 -> 2 * 513              log-magnitude, phase per bin
      -> exp (capped) and cos/sin -> complex spectrum    [B, 513, T]
      -> inverse STFT (n_fft 1024, hop 256, Hann, "same") [B, T * 256]

Alignment: HiFi-GAN's mel frame ``t`` is centred on sample ``256 t + 128`` (the features
reflect-pad ``(n_fft - hop) / 2`` samples, then frame without centring). The inverse STFT
here overlap-adds every frame starting at ``256 t - 384`` and trims 384 samples on each side,
which puts frame ``t`` at the same centre; ``torch.istft(center=True)`` would be half a hop off.

Every operation is per frame or a convolution over frames; nothing normalises across time,
so batch rows are computed exactly as they would be alone and a window with enough context
(:data:`RECEPTIVE_FIELD_FRAMES`) reproduces the one-pass output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from services.runtime.voice import HOP_LENGTH, N_MELS

__all__ = ["RECEPTIVE_FIELD_FRAMES", "FastVocoder", "FastVocoderConfig", "InverseSTFT"]

# exp() of the predicted log-magnitude is capped here: a wild output early in training (or on
# an out-of-range mel) cannot make the inverse STFT overflow.
_MAX_MAGNITUDE = 1e2


@dataclass(frozen=True)
class FastVocoderConfig:
    """Hyperparameters of :class:`FastVocoder` (the shipped weights use the defaults)."""

    n_mels: int = N_MELS
    dim: int = 384
    intermediate_dim: int = 1152
    num_blocks: int = 8
    kernel_size: int = 7
    n_fft: int = 1024
    hop_length: int = HOP_LENGTH

    @property
    def n_bins(self) -> int:
        """One-sided STFT bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def receptive_field_frames(self) -> int:
        """Mel frames on each side that can change one output frame's audio: the input conv
        and every block's depthwise conv reach ``kernel // 2`` frames each, and the inverse
        STFT overlaps ``n_fft / hop - 1`` neighbouring frames (half of them on each side)."""
        conv = (self.num_blocks + 1) * (self.kernel_size // 2)
        return conv + -(-(self.n_fft // self.hop_length - 1) // 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: How far (in mel frames, each side) the shipped architecture sees: streaming windows need
#: about this much context to match one-pass output (services/vocoder/stage.py).
RECEPTIVE_FIELD_FRAMES = FastVocoderConfig().receptive_field_frames


class InverseSTFT(nn.Module):
    """Inverse STFT with "same" padding: ``T`` frames -> exactly ``T * hop`` samples.

    Overlap-adds the windowed inverse FFTs of all frames, divides by the summed squared
    window (the least-squares inverse of a Hann-windowed STFT) and trims ``(n_fft - hop) / 2``
    samples on each side, so frame ``t`` is centred on sample ``hop * t + hop / 2`` like the
    HiFi-GAN mel features (see the module docstring).
    """

    window: torch.Tensor

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        if (n_fft - hop_length) % 2:
            raise ValueError("n_fft - hop_length must be even")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.pad = (n_fft - hop_length) // 2
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, n_fft, T]`` -> ``[B, (T - 1) * hop + n_fft]`` by summing shifted frames."""
        length = (frames.shape[-1] - 1) * self.hop_length + self.n_fft
        out = F.fold(
            frames,
            output_size=(1, length),
            kernel_size=(1, self.n_fft),
            stride=(1, self.hop_length),
        )
        return out[:, 0, 0, :]

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Complex ``[B, n_fft // 2 + 1, T]`` -> float waveform ``[B, T * hop]``."""
        frames = torch.fft.irfft(spectrum, n=self.n_fft, dim=1) * self.window[None, :, None]
        audio = self._overlap_add(frames)
        squared = self.window.square()[None, :, None].expand(1, -1, spectrum.shape[-1])
        envelope = self._overlap_add(squared)
        end = audio.shape[-1] - self.pad
        # Inside the trimmed range every sample is covered by at least one frame's window
        # (hop <= n_fft / 2 with Hann), so the envelope is bounded away from zero there.
        return audio[:, self.pad : end] / envelope[:, self.pad : end]


class ConvNeXtBlock(nn.Module):
    """Depthwise conv over frames -> LayerNorm -> pointwise MLP (GELU), scaled, residual."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int, scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        # Layer scale: each block starts as a small perturbation of the identity.
        self.gamma = nn.Parameter(torch.full((dim,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, T]`` -> ``[B, dim, T]``."""
        y = self.dwconv(x).transpose(1, 2)  # [B, T, dim]
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class FastVocoder(nn.Module):
    """HiFi-GAN log-mel ``[B, 80, T]`` -> waveform ``[B, T * 256]`` at the frame rate."""

    def __init__(self, config: FastVocoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FastVocoderConfig()
        self.embed = nn.Conv1d(cfg.n_mels, cfg.dim, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.dim, cfg.intermediate_dim, cfg.kernel_size, 1.0 / cfg.num_blocks)
            for _ in range(cfg.num_blocks)
        )
        self.final_norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, 2 * cfg.n_bins)
        self.istft = InverseSTFT(cfg.n_fft, cfg.hop_length)

    @property
    def hop_length(self) -> int:
        """Audio samples generated per input frame."""
        return self.config.hop_length

    def reset_parameters(self, seed: int) -> None:
        """Seeded initialisation (truncated normal, std 0.02, zero biases), as Vocos does."""
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Linear):
                with torch.no_grad():
                    weight = torch.randn(module.weight.shape, generator=generator) * 0.02
                    module.weight.copy_(weight.clamp(-0.04, 0.04))
                    if module.bias is not None:
                        module.bias.zero_()

    def spectrum(self, mel: torch.Tensor) -> torch.Tensor:
        """The predicted complex STFT ``[B, 513, T]`` of the waveform."""
        x = self.embed(mel)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        x = self.head(self.final_norm(x.transpose(1, 2))).transpose(1, 2)
        log_magnitude, phase = x.float().chunk(2, dim=1)
        magnitude = torch.exp(log_magnitude).clamp(max=_MAX_MAGNITUDE)
        return torch.polar(magnitude, phase)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Vocode ``mel`` ``[B, 80, T]`` into a float32 waveform ``[B, T * 256]`` (unclipped:
        :func:`services.vocoder.stage.to_pcm16` clamps to [-1, 1])."""
        return self.istft(self.spectrum(mel))
