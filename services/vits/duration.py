"""The stochastic duration predictor (VITS's ``dp``), inference direction only.

Durations are modelled by a normalising flow over two channels conditioned on the text
encoder's hidden states. At inference, Gaussian noise (scaled by ``noise_w``) runs backwards
through the flows; the first output channel is the log-duration of each id.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from services.vits.config import VitsConfig
from services.vits.modules import DDSConv, Flip, inverse_rational_quadratic_spline

__all__ = ["ConvFlow", "ElementwiseAffine", "StochasticDurationPredictor"]


class ElementwiseAffine(nn.Module):
    """``y = m + exp(logs) * x`` per channel. `forward` runs the inverse (inference only)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(channels, 1))
        self.logs = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, y: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        """``y [B, C, T]`` -> ``x [B, C, T]`` (`g` unused: same call as the other flows)."""
        return (y - self.m) * torch.exp(-self.logs) * x_mask


class ConvFlow(nn.Module):
    """Coupling layer: the second half of the channels goes through a monotone spline whose
    knots a DDSConv computes from the first half and the conditioning. `forward` runs the
    inverse (inference only)."""

    def __init__(
        self, channels: int, filter_channels: int, kernel_size: int, n_layers: int,
        num_bins: int, tail_bound: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.half_channels = channels // 2
        self.filter_channels = filter_channels
        self.num_bins = num_bins
        self.tail_bound = tail_bound
        self.pre = nn.Conv1d(self.half_channels, filter_channels, 1)
        self.convs = DDSConv(filter_channels, kernel_size, n_layers)
        # Per half-channel: K widths, K heights, K-1 inner-knot derivatives.
        self.proj = nn.Conv1d(filter_channels, self.half_channels * (num_bins * 3 - 1), 1)

    def forward(self, y: Tensor, x_mask: Tensor, g: Tensor) -> Tensor:
        """``y [B, C, T]``, ``x_mask [B, 1, T]``, conditioning ``g [B, F, T]`` -> ``[B, C, T]``."""
        y0, y1 = y.split(self.half_channels, dim=1)
        h = self.proj(self.convs(self.pre(y0), x_mask, g=g)) * x_mask
        b, c, t = y0.shape
        h = h.reshape(b, c, -1, t).permute(0, 1, 3, 2)  # [B, c, T, 3K-1]
        k = self.num_bins
        # Dividing by sqrt(F) keeps the softmax inputs near unit scale (as VITS trained it).
        scale = math.sqrt(self.filter_channels)
        x1 = inverse_rational_quadratic_spline(
            y1, h[..., :k] / scale, h[..., k : 2 * k] / scale, h[..., 2 * k :], self.tail_bound
        )
        return torch.cat([y0, x1], dim=1) * x_mask


class StochasticDurationPredictor(nn.Module):
    """Hidden states ``[B, H, T]`` + noise ``[B, 2, T]`` -> log-durations ``[B, 1, T]``.

    ``flows`` keeps VITS's indices so weights load under their original names:
    0 = ElementwiseAffine, then (ConvFlow, Flip) pairs. VITS drops flow 1 at inference (its
    training-time output channel is never read), so index 1 is a placeholder.
    """

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        filters = config.dp_filter_channels
        self.pre = nn.Conv1d(config.hidden_channels, filters, 1)
        self.convs = DDSConv(filters, config.dp_kernel_size, config.dp_n_layers)
        self.proj = nn.Conv1d(filters, filters, 1)
        self.cond = nn.Conv1d(config.gin_channels, filters, 1) if config.gin_channels else None
        flows: list[nn.Module] = [ElementwiseAffine(2)]
        for i in range(config.dp_n_flows):
            flows += [nn.Identity() if i == 0 else self._conv_flow(config), Flip()]
        self.flows = nn.ModuleList(flows)

    @staticmethod
    def _conv_flow(config: VitsConfig) -> ConvFlow:
        return ConvFlow(
            2,
            config.dp_filter_channels,
            config.dp_kernel_size,
            config.dp_flow_n_layers,
            config.dp_num_bins,
            config.dp_tail_bound,
        )

    def forward(self, x: Tensor, x_mask: Tensor, noise: Tensor, g: Tensor | None) -> Tensor:
        """``x [B, H, T]``, ``x_mask [B, 1, T]``, ``noise [B, 2, T]`` (already scaled by
        noise_w), ``g [B, gin, 1]`` or None -> ``logw [B, 1, T]``."""
        x = self.pre(x)
        if self.cond is not None and g is not None:
            x = x + self.cond(g)
        x = self.proj(self.convs(x, x_mask)) * x_mask
        z = noise * x_mask
        # Backwards through the flows, skipping the placeholder at index 1.
        for flow in [*reversed(self.flows[2:]), self.flows[0]]:
            z = flow(z, x_mask, x)
        return z[:, :1]
