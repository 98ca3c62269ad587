"""`VitsConfig`: every size a VITS voice is built from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = ["VitsConfig"]


@dataclass(frozen=True)
class VitsConfig:
    """Hyperparameters of a VITS generator at inference time (no training-only sizes).

    Defaults are Piper's medium voices (``en_US-joe-medium``), single speaker.
    """

    # Text encoder (enc_p): embedding + relative-position transformer + projection.
    n_vocab: int = 256
    inter_channels: int = 192  # latent channels: prior mean/log-scale, flow, decoder input
    hidden_channels: int = 192
    filter_channels: int = 768  # the feed-forward layers' inner width
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3  # feed-forward conv kernel
    window_size: int = 4  # relative attention sees positions -window..+window
    # Stochastic duration predictor (dp).
    dp_filter_channels: int = 192
    dp_kernel_size: int = 3
    dp_n_layers: int = 3  # DDSConv layers of the conditioning stack
    dp_n_flows: int = 4  # spline coupling flows (VITS skips the first one at inference)
    dp_flow_n_layers: int = 3  # DDSConv layers inside each spline flow
    dp_num_bins: int = 10
    dp_tail_bound: float = 5.0
    # Residual coupling flow (flow).
    flow_n_flows: int = 4
    flow_hidden_channels: int = 192
    flow_kernel_size: int = 5
    flow_dilation_rate: int = 1
    flow_n_layers: int = 4  # WaveNet layers per coupling
    # HiFi-GAN decoder (dec).
    # HiFi-GAN's residual block design: "1" has two convs per dilation (dilated + plain),
    # "2" one dilated conv per dilation (lighter; Piper's medium voices use it).
    resblock: Literal["1", "2"] = "2"
    resblock_kernel_sizes: tuple[int, ...] = (3, 5, 7)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 2), (2, 6), (3, 12))
    upsample_rates: tuple[int, ...] = (8, 8, 4)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8)
    upsample_initial_channel: int = 256
    # Speakers: one embedding of gin_channels per speaker; 0 / 1 for a single speaker.
    n_speakers: int = 1
    gin_channels: int = 0
    sample_rate: int = 22050

    def __post_init__(self) -> None:
        if self.resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', not {self.resblock!r}")
        if self.hidden_channels % self.n_heads:
            raise ValueError("hidden_channels must be a multiple of n_heads")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if (self.n_speakers > 1) != (self.gin_channels > 0):
            raise ValueError("a multi-speaker voice needs gin_channels > 0, a single one 0")

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame: the decoder's total upsampling."""
        return math.prod(self.upsample_rates)

    @property
    def multi_speaker(self) -> bool:
        return self.n_speakers > 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); `from_json` reads it back."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VitsConfig:
        """Build from `to_json`'s dict. Unknown keys are an error: a newer format must not
        be half-read."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VitsConfig fields: {', '.join(unknown)}")
        values = dict(data)
        for key in ("resblock_kernel_sizes", "upsample_rates", "upsample_kernel_sizes"):
            if key in values:
                values[key] = tuple(values[key])
        if "resblock_dilation_sizes" in values:
            values["resblock_dilation_sizes"] = tuple(
                tuple(d) for d in values["resblock_dilation_sizes"]
            )
        return cls(**values)
