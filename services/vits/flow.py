"""The prior-to-latent flow (VITS's ``flow``), reverse direction.

Training maps the posterior latent z to the prior's space; at inference a prior sample runs
backwards to become z, the decoder's input. Each coupling shifts one half of the channels by
a WaveNet function of the other half (volume preserving, "mean only"); flips between
couplings alternate the halves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from services.vits.config import VitsConfig
from services.vits.modules import Flip, WaveNet

__all__ = ["ResidualCouplingFlow", "ResidualCouplingLayer"]


class ResidualCouplingLayer(nn.Module):
    """``x1 <- x1 + m(x0)`` with ``m`` = pre 1x1 conv -> WaveNet -> post 1x1 conv.
    `forward` runs the inverse, ``x1 <- x1 - m(x0)`` (inference only)."""

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        self.half_channels = config.inter_channels // 2
        hidden = config.flow_hidden_channels
        self.pre = nn.Conv1d(self.half_channels, hidden, 1)
        self.enc = WaveNet(
            hidden,
            config.flow_kernel_size,
            config.flow_dilation_rate,
            config.flow_n_layers,
            config.gin_channels,
        )
        self.post = nn.Conv1d(hidden, self.half_channels, 1)

    def forward(self, y: Tensor, x_mask: Tensor, g: Tensor | None) -> Tensor:
        """``y [B, C, F]``, ``x_mask [B, 1, F]``, ``g [B, gin, 1]`` or None -> ``[B, C, F]``."""
        y0, y1 = y.split(self.half_channels, dim=1)
        h = self.enc(self.pre(y0) * x_mask, x_mask, g=g)
        shift = self.post(h) * x_mask
        return torch.cat([y0, (y1 - shift) * x_mask], dim=1)


class ResidualCouplingFlow(nn.Module):
    """(coupling, flip) x `flow_n_flows`, under VITS's indices (couplings at even indices)."""

    def __init__(self, config: VitsConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(config.flow_n_flows):
            layers += [ResidualCouplingLayer(config), Flip()]
        self.flows = nn.ModuleList(layers)

    def forward(self, z_p: Tensor, x_mask: Tensor, g: Tensor | None) -> Tensor:
        """Prior sample ``z_p [B, C, F]`` -> latent ``z [B, C, F]`` (the inverse flow)."""
        z = z_p
        for layer in reversed(self.flows):
            z = layer(z, x_mask, g)
        return z
