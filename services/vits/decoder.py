"""The decoder (VITS's ``dec``): a HiFi-GAN generator, latent frames -> waveform.

conv_pre -> for each scale: LeakyReLU, transposed-conv upsampling, the mean of parallel
residual blocks (one per kernel size) -> LeakyReLU -> conv_post -> tanh.

When rows of a batch have different lengths, pass ``lengths`` and every convolution's input
is zeroed past the row's end (at that layer's rate), which is what the zero padding of a
row decoded alone would put there; otherwise the tail of a short row would see its
neighbour-free padding turned non-zero by the biases.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from services.vits.config import VitsConfig
from services.vits.modules import sequence_mask

__all__ = ["Generator", "ResBlock1", "ResBlock2", "context_frames", "receptive_field_frames"]

#: HiFi-GAN's LeakyReLU slope inside the network (the one before conv_post is torch's 0.01).
LRELU_SLOPE = 0.1


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask


class ResBlock1(nn.Module):
    """Per dilation d: x += conv(lrelu(conv_d(lrelu(x)))) (a dilated then a plain conv)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d,
                      padding=_same_padding(kernel_size, d))
            for d in dilations
        )  # fmt: skip
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, 1))
            for _ in dilations
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, C, S]``, optional ``mask [B, 1, S]`` -> ``[B, C, S]``."""
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            y = conv1(_masked(F.leaky_relu(x, LRELU_SLOPE), mask))
            x = x + conv2(_masked(F.leaky_relu(y, LRELU_SLOPE), mask))
        return x


class ResBlock2(nn.Module):
    """Per dilation d: x += conv_d(lrelu(x))."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d,
                      padding=_same_padding(kernel_size, d))
            for d in dilations
        )  # fmt: skip

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, C, S]``, optional ``mask [B, 1, S]`` -> ``[B, C, S]``."""
        for conv in self.convs:
            x = x + conv(_masked(F.leaky_relu(x, LRELU_SLOPE), mask))
        return x


class Generator(nn.Module):
    """Latent ``[B, C, F]`` -> audio ``[B, 1, F * hop]`` in [-1, 1]."""

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.upsample_rates = config.upsample_rates
        channels = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.inter_channels, channels, 7, padding=3)
        self.cond = nn.Conv1d(config.gin_channels, channels, 1) if config.gin_channels else None
        block = ResBlock1 if config.resblock == "1" else ResBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True):
            # padding (k - u) / 2 makes each input frame produce exactly u output samples.
            self.ups.append(
                nn.ConvTranspose1d(channels, channels // 2, kernel, rate,
                                   padding=(kernel - rate) // 2)
            )  # fmt: skip
            channels //= 2
            for k, dilations in zip(
                config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
            ):
                self.resblocks.append(block(channels, k, dilations))
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3, bias=False)

    def forward(self, z: Tensor, g: Tensor | None = None, lengths: Tensor | None = None) -> Tensor:
        """``z [B, C, F]``, ``g [B, gin, 1]`` or None, optional frame ``lengths [B]`` ->
        ``[B, 1, F * hop]`` (0 past each row's end when `lengths` is given)."""
        scale = 1
        mask = self._mask(lengths, z.shape[2], scale)
        x = self.conv_pre(_masked(z, mask))
        if self.cond is not None and g is not None:
            x = x + self.cond(g)
        for i, (up, rate) in enumerate(zip(self.ups, self.upsample_rates, strict=True)):
            x = up(_masked(F.leaky_relu(x, LRELU_SLOPE), mask))
            scale *= rate
            mask = self._mask(lengths, x.shape[2], scale)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x, mask) for block in blocks) / self.num_kernels
        x = self.conv_post(_masked(F.leaky_relu(x), mask))
        return _masked(x.tanh(), mask)

    @staticmethod
    def _mask(lengths: Tensor | None, steps: int, scale: int) -> Tensor | None:
        return None if lengths is None else sequence_mask(lengths * scale, steps)


def _resblock_reach(kind: str, kernel_size: int, dilations: tuple[int, ...]) -> int:
    """Samples a residual block's output reaches on either side (its convs run in series)."""
    plain = _same_padding(kernel_size, 1) if kind == "1" else 0  # ResBlock1's second conv
    return sum(_same_padding(kernel_size, d) + plain for d in dilations)


def receptive_field_frames(config: VitsConfig) -> float:
    """How far, in latent frames, the decoder's output reaches into its input on either side.

    Walks the layers, adding each one's reach in units of frames: a conv of kernel k and
    dilation d reaches d(k-1)/2 samples of its rate; a transposed conv of stride u, kernel k
    and padding p reaches (k-1-p) output samples back and (p+u-1) forward (its inputs cover
    whole input steps); the parallel residual blocks reach as far as the widest one.
    """
    reach = 3.0  # conv_pre, kernel 7, at the frame rate
    scale = 1
    for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True):
        scale *= rate
        padding = (kernel - rate) // 2
        reach += max(kernel - 1 - padding, padding + rate - 1) / scale
        per_block = (
            _resblock_reach(config.resblock, k, dilations)
            for k, dilations in zip(
                config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
            )
        )
        reach += max(per_block) / scale
    return reach + 3 / scale  # conv_post, kernel 7, at the audio rate


def context_frames(config: VitsConfig) -> int:
    """Latent frames of context on each side of a window that make windowed decoding equal
    one-pass decoding to float precision (12 for Piper's medium voices)."""
    return math.ceil(receptive_field_frames(config))
