"""Small layers shared by the VITS parts: masks, channel LayerNorm, DDSConv, WaveNet, flips,
and the rational-quadratic spline used by the duration predictor's flows.

Shapes: B batch, C channels, T time steps (ids or frames). Masks are float ``[B, 1, T]``
(1 on valid steps, 0 on padding), multiplied in wherever padding could leak into valid steps
through a convolution, so a padded batch row computes exactly what the row computes alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DDSConv",
    "Flip",
    "LayerNorm",
    "WaveNet",
    "inverse_rational_quadratic_spline",
    "sequence_mask",
    "speaker_embedding",
]


def sequence_mask(lengths: Tensor, max_length: int | Tensor) -> Tensor:
    """Float mask ``[B, 1, max_length]``: 1 where ``t < lengths[b]``. (A 0-d tensor
    `max_length` keeps the length symbolic when the caller is traced for ONNX export.)"""
    steps = torch.arange(max_length, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).unsqueeze(1).float()


def speaker_embedding(emb_g: nn.Embedding | None, sid: Tensor | None) -> Tensor | None:
    """The conditioning vector ``g`` ``[B, gin, 1]`` of speakers `sid` ``[B]``, or None for a
    single-speaker voice."""
    if emb_g is None:
        return None
    if sid is None:
        raise ValueError("this voice has several speakers: pass sid (one id per batch row)")
    return emb_g(sid).unsqueeze(-1)


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``[B, C, T]`` (VITS names its affine `gamma`/`beta`)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T] -> [B, C, T]``."""
        y = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return y.transpose(1, -1)


class Flip(nn.Module):
    """Reverse the channel order, so the next coupling transforms the other half. Its own
    inverse, so it serves both directions; it takes (and ignores) the mask and conditioning
    the couplings take, so a flow stack calls every layer alike."""

    def forward(self, x: Tensor, *_: Tensor | None) -> Tensor:
        """``[B, C, T] -> [B, C, T]``."""
        return torch.flip(x, [1])


class DDSConv(nn.Module):
    """Dilated depth-separable conv stack (the duration predictor's feature extractor).

    Layer i: depthwise conv with dilation ``kernel_size**i`` -> LayerNorm -> GELU -> 1x1 conv ->
    LayerNorm -> GELU, added to its input.
    """

    def __init__(self, channels: int, kernel_size: int, n_layers: int) -> None:
        super().__init__()
        self.convs_sep = nn.ModuleList()
        self.convs_1x1 = nn.ModuleList()
        self.norms_1 = nn.ModuleList()
        self.norms_2 = nn.ModuleList()
        for i in range(n_layers):
            dilation = kernel_size**i
            padding = (kernel_size * dilation - dilation) // 2
            self.convs_sep.append(
                nn.Conv1d(
                    channels,
                    channels,
                    kernel_size,
                    groups=channels,
                    dilation=dilation,
                    padding=padding,
                )
            )
            self.convs_1x1.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(LayerNorm(channels))
            self.norms_2.append(LayerNorm(channels))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        """``x [B, C, T]``, ``x_mask [B, 1, T]``, optional additive ``g [B, C, T]`` ->
        ``[B, C, T]``."""
        if g is not None:
            x = x + g
        for conv_sep, conv_1x1, norm_1, norm_2 in zip(
            self.convs_sep, self.convs_1x1, self.norms_1, self.norms_2, strict=True
        ):
            y = F.gelu(norm_1(conv_sep(x * x_mask)))
            y = F.gelu(norm_2(conv_1x1(y)))
            x = x + y
        return x * x_mask


class WaveNet(nn.Module):
    """Non-causal WaveNet: gated dilated convs with residual and skip paths, optionally
    conditioned on a speaker vector. The flow's coupling layers use it."""

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        # One 1x1 conv produces every layer's conditioning at once (sliced per layer).
        self.cond_layer = (
            nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1) if gin_channels else None
        )
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(
                nn.Conv1d(
                    hidden_channels,
                    2 * hidden_channels,
                    kernel_size,
                    dilation=dilation,
                    padding=padding,
                )
            )
            # The last layer only feeds the skip sum, so it has no residual half.
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(nn.Conv1d(hidden_channels, out, 1))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        """``x [B, H, T]``, ``x_mask [B, 1, T]``, ``g [B, gin, 1]`` or None -> ``[B, H, T]``."""
        h = self.hidden_channels
        output = torch.zeros_like(x)
        cond = self.cond_layer(g) if self.cond_layer is not None and g is not None else None
        for i, (in_layer, res_skip) in enumerate(
            zip(self.in_layers, self.res_skip_layers, strict=True)
        ):
            x_in = in_layer(x)
            if cond is not None:
                x_in = x_in + cond[:, 2 * h * i : 2 * h * (i + 1)]
            acts = torch.tanh(x_in[:, :h]) * torch.sigmoid(x_in[:, h:])
            res_skip_acts = res_skip(acts)
            if i < self.n_layers - 1:
                x = (x + res_skip_acts[:, :h]) * x_mask
                output = output + res_skip_acts[:, h:]
            else:
                output = output + res_skip_acts
        return output * x_mask


def _bin_edges(unnormalized: Tensor, low: float, high: float, min_size: float) -> Tensor:
    """Monotone knot positions ``[..., K+1]`` from ``K`` unnormalised bin sizes: softmax, each
    bin at least `min_size` of the range, spanning exactly ``[low, high]``."""
    n_bins = unnormalized.shape[-1]
    sizes = min_size + (1 - min_size * n_bins) * torch.softmax(unnormalized, dim=-1)
    edges = F.pad(torch.cumsum(sizes, dim=-1), (1, 0), value=0.0)
    edges = (high - low) * edges + low
    # Pin the ends exactly, so rounding in cumsum cannot leave a gap at the bounds.
    return torch.cat([torch.full_like(edges[..., :1], low), edges[..., 1:-1],
                      torch.full_like(edges[..., :1], high)], dim=-1)  # fmt: skip


def inverse_rational_quadratic_spline(
    y: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    tail_bound: float,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> Tensor:
    """Invert a monotone rational-quadratic spline (Durkan et al., 2019) with linear tails.

    `y` ``[...]``; widths and heights ``[..., K]``; derivatives at the K-1 inner knots
    ``[..., K-1]``. Inside ``[-tail_bound, tail_bound]`` the spline maps x to y; outside it is
    the identity (the boundary derivatives are fixed to 1 so the pieces join smoothly).
    Returns x ``[...]``.
    """
    inside = (y >= -tail_bound) & (y <= tail_bound)
    # softplus(c) + min_derivative == 1 at the two boundary knots: the linear tails' slope.
    boundary = math.log(math.exp(1 - min_derivative) - 1)
    unnormalized_derivatives = F.pad(unnormalized_derivatives, (1, 1), value=boundary)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)
    x_edges = _bin_edges(unnormalized_widths, -tail_bound, tail_bound, min_bin_width)
    y_edges = _bin_edges(unnormalized_heights, -tail_bound, tail_bound, min_bin_height)

    # The bin holding y; the last edge is nudged up so y == tail_bound lands in the last bin.
    y_search = torch.cat([y_edges[..., :-1], y_edges[..., -1:] + 1e-6], dim=-1)
    k = ((y[..., None] >= y_search).sum(dim=-1, keepdim=True) - 1).clamp(0, y_edges.shape[-1] - 2)

    def at(t: Tensor, offset: int = 0) -> Tensor:
        return t[..., offset:].gather(-1, k)[..., 0]

    x0, width = at(x_edges), at(x_edges, 1) - at(x_edges)
    y0, height = at(y_edges), at(y_edges, 1) - at(y_edges)
    d0, d1 = at(derivatives), at(derivatives, 1)
    slope = height / width
    # Solve the bin's rational quadratic for its relative position xi in [0, 1]:
    # a xi^2 + b xi + c = 0, taking the root that is stable for small c.
    dy = y - y0
    curvature = d0 + d1 - 2 * slope
    a = dy * curvature + height * (slope - d0)
    b = height * d0 - dy * curvature
    c = -slope * dy
    xi = (2 * c) / (-b - torch.sqrt(b.pow(2) - 4 * a * c))
    return torch.where(inside, xi * width + x0, y)
