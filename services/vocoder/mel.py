"""HiFi-GAN log-mel features, computed exactly as the shipped vocoder expects them.

The pretrained HiFi-GAN V1 generators (``universal`` and ``LJSpeech``) were trained on log-mel
spectrograms produced by ``meldataset.mel_spectrogram`` of the original HiFi-GAN repository
(jik876/hifi-gan). Any mel that is fed to the vocoder — in particular the targets an acoustic
model is trained on — must be computed the same way, or the vocoder hears a slightly different
"language" and quality drops. This module re-implements that function without librosa:

* magnitude (not power) STFT: ``sqrt(re**2 + im**2 + 1e-9)``, periodic Hann window,
  n_fft = win = 1024, hop = 256, at 22050 Hz;
* framing: reflect-pad ``(n_fft - hop) // 2`` samples on both sides, then ``center=False``, so
  ``frames == samples // hop`` whenever ``samples`` is a multiple of ``hop``;
* 80-band Slaney mel filterbank over 0–8000 Hz with Slaney area normalisation
  (librosa's default ``librosa.filters.mel(..., htk=False, norm="slaney")``);
* natural log with the magnitude clamped at 1e-5 (``log(1e-5) ≈ -11.51`` is "silence").

No loudness normalisation is applied: the input is a float waveform in [-1, 1] exactly as it
should sound. (HiFi-GAN's training loader peak-normalised clips to 0.95; that is a data-set
choice, not part of the feature.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from services.runtime.voice import HOP_LENGTH, N_MELS, SAMPLE_RATE_HZ

__all__ = [
    "LogMelSpectrogram",
    "MelConfig",
    "hz_to_mel",
    "mel_filterbank",
    "mel_to_hz",
]

# Slaney's Auditory Toolbox mel scale (librosa's htk=False): linear below 1 kHz, log above.
_SLANEY_F_SP = 200.0 / 3.0  # Hz per mel in the linear region
_SLANEY_MIN_LOG_HZ = 1000.0  # where the scale turns logarithmic
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP  # = 15 mel
_SLANEY_LOGSTEP = math.log(6.4) / 27.0  # 27 mel per factor 6.4 in frequency

# HiFi-GAN adds this inside the square root of |X|^2; it floors the magnitude at ~3.2e-5, which
# is above the log clamp, so it changes "silent" bins and must be kept for exactness.
_MAGNITUDE_EPS = 1e-9


@dataclass(frozen=True)
class MelConfig:
    """Feature settings of the pretrained HiFi-GAN V1 vocoders (its ``config.json``).

    Attributes:
        sample_rate: Audio sample rate in Hz.
        n_mels: Number of mel bands (the vocoder's input channels).
        n_fft: FFT size in samples.
        hop_length: Samples between frames; also the vocoder's upsampling factor.
        win_length: Hann window length in samples.
        fmin: Lowest filterbank frequency in Hz.
        fmax: Highest filterbank frequency in Hz.
        log_clamp: Magnitudes are clamped to at least this before the natural log.
    """

    sample_rate: int = SAMPLE_RATE_HZ
    n_mels: int = N_MELS
    n_fft: int = 1024
    hop_length: int = HOP_LENGTH
    win_length: int = 1024
    fmin: float = 0.0
    fmax: float = 8000.0
    log_clamp: float = 1e-5

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if not 0 < self.hop_length <= self.n_fft:
            raise ValueError(f"hop_length must be in (0, n_fft], got {self.hop_length}")
        if (self.n_fft - self.hop_length) % 2:
            # The symmetric reflect padding below needs an even split.
            raise ValueError("n_fft - hop_length must be even")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sr/2, got {self.fmin}, {self.fmax}")
        if self.log_clamp <= 0:
            raise ValueError("log_clamp must be positive")

    @property
    def n_freqs(self) -> int:
        """Number of one-sided STFT bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def pad(self) -> int:
        """Reflect padding added on each side of the waveform before framing."""
        return (self.n_fft - self.hop_length) // 2

    @property
    def log_floor(self) -> float:
        """The log-mel value of silence, ``log(log_clamp)``."""
        return math.log(self.log_clamp)

    def num_frames(self, num_samples: int) -> int:
        """Frames :class:`LogMelSpectrogram` yields for ``num_samples`` samples."""
        padded = num_samples + 2 * self.pad
        return 0 if padded < self.n_fft else 1 + (padded - self.n_fft) // self.hop_length


def hz_to_mel(freqs: np.ndarray | float) -> np.ndarray:
    """Convert Hz to Slaney mels (librosa ``hz_to_mel(..., htk=False)``)."""
    freqs = np.asarray(freqs, dtype=np.float64)
    mels = freqs / _SLANEY_F_SP
    log_region = freqs >= _SLANEY_MIN_LOG_HZ
    # np.maximum keeps log() away from 0 Hz in the branch np.where discards anyway.
    log_mels = _SLANEY_MIN_LOG_MEL + np.log(np.maximum(freqs, 1e-12) / _SLANEY_MIN_LOG_HZ) / (
        _SLANEY_LOGSTEP
    )
    return np.where(log_region, log_mels, mels)


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Convert Slaney mels to Hz (librosa ``mel_to_hz(..., htk=False)``)."""
    mels = np.asarray(mels, dtype=np.float64)
    freqs = _SLANEY_F_SP * mels
    log_region = mels >= _SLANEY_MIN_LOG_MEL
    log_freqs = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (mels - _SLANEY_MIN_LOG_MEL))
    return np.where(log_region, log_freqs, freqs)


def mel_filterbank(cfg: MelConfig | None = None) -> torch.Tensor:
    """Slaney-normalised triangular mel filterbank, as ``librosa.filters.mel`` builds it.

    Args:
        cfg: Feature settings; defaults to the HiFi-GAN ones.

    Returns:
        float32 tensor ``[n_mels, n_fft // 2 + 1]`` mapping STFT magnitudes to mel bands.
    """
    cfg = cfg or MelConfig()
    # Computed in float64 like librosa, stored as float32 like librosa's default dtype.
    fft_freqs = np.linspace(0.0, cfg.sample_rate / 2.0, cfg.n_freqs)
    # n_mels + 2 edges: filter i rises from edge i to its peak at edge i+1, falls to edge i+2.
    mel_edges = np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2)
    hz_edges = mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]  # [n_mels + 2, n_freqs]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: every triangle gets (roughly) unit area in Hz, so wide high bands
    # are not louder than narrow low ones.
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


class LogMelSpectrogram(torch.nn.Module):
    """HiFi-GAN's log-mel spectrogram (``meldataset.mel_spectrogram``) as a torch module.

    This is the feature the vocoder was trained on; use it for acoustic-model targets so they
    are exactly what the vocoder expects. See the module docstring for the recipe.

    Input: float waveform in [-1, 1] at ``cfg.sample_rate``, shaped ``[samples]`` or
    ``[batch, samples]``, on any device. It must be longer than ``cfg.pad`` (384) samples
    because of the reflect padding.

    Output: float32 log-mel ``[n_mels, frames]`` or ``[batch, n_mels, frames]`` on the input's
    device, with ``frames == cfg.num_frames(samples)`` (``samples // hop`` for multiples of
    ``hop``).
    """

    mel_basis: torch.Tensor
    window: torch.Tensor

    def __init__(self, cfg: MelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MelConfig()
        # Non-persistent buffers: they follow .to(device) but stay out of state_dicts, since
        # they are derived from cfg and not learned.
        self.register_buffer("mel_basis", mel_filterbank(self.cfg), persistent=False)
        # torch.hann_window is periodic by default, like the original (and scipy's "hann" STFT).
        self.register_buffer("window", torch.hann_window(self.cfg.win_length), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Compute the log-mel of ``waveform`` (see the class docstring for shapes)."""
        if waveform.dim() not in (1, 2):
            raise ValueError(f"expected [samples] or [batch, samples], got {list(waveform.shape)}")
        if not waveform.is_floating_point():
            raise TypeError(f"expected a float waveform in [-1, 1], got {waveform.dtype}")
        cfg = self.cfg
        if waveform.shape[-1] <= cfg.pad:
            raise ValueError(
                f"waveform has {waveform.shape[-1]} samples; reflect padding needs more than "
                f"{cfg.pad}"
            )
        unbatched = waveform.dim() == 1
        # STFT in float32: half precision STFTs are unsupported on CPU and lossy on GPU.
        audio = waveform.float().reshape(-1, waveform.shape[-1])
        # F.pad's reflect mode wants a channel dimension: [batch, 1, samples].
        audio = torch.nn.functional.pad(audio.unsqueeze(1), (cfg.pad, cfg.pad), mode="reflect")
        spec = torch.stft(
            audio.squeeze(1),
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window.to(audio.device),
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        magnitude = torch.sqrt(spec.real.square() + spec.imag.square() + _MAGNITUDE_EPS)
        mel = torch.matmul(self.mel_basis.to(audio.device), magnitude)
        log_mel = torch.log(torch.clamp(mel, min=cfg.log_clamp))
        return log_mel.squeeze(0) if unbatched else log_mel
