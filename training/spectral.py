"""Objective spectral distances between two renderings of the same utterance.

Used to compare the fast vocoder's audio with HiFi-GAN's for the same mel (and either with a
reference), in `training.vocoder_eval` and the tests. Both measures work on HiFi-GAN log-mels
(`services.vocoder.mel.LogMelSpectrogram`) of equal-length audio:

* log-mel L1: mean absolute difference of the natural-log mel magnitudes;
* mel-cepstral distortion (MCD, dB): cepstra from the 80-band log-mel by an orthonormal
  DCT-II, coefficients 1..24 (c0, overall loudness, left out), per frame
  ``10 / ln 10 * sqrt(2 * sum (c - c')^2)``, averaged over frames where the reference is not
  silent. It is the usual MCD formula on mel-frequency cepstra from the filterbank, not on
  SPTK mel-generalised cepstra, so compare values only with each other.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from services.vocoder.mel import LogMelSpectrogram

__all__ = ["log_mel", "log_mel_l1", "mel_cepstral_distortion"]

_CEPSTRA = 24
# Frames whose loudest band is this far below the utterance's loudest are silence (natural
# log units: 8 ~ 70 dB).
_SILENCE_BELOW_PEAK = 8.0


def log_mel(pcm: np.ndarray | torch.Tensor) -> torch.Tensor:
    """int16 (or float in [-1, 1]) audio at 22050 Hz -> log-mel ``[80, frames]``."""
    audio = torch.as_tensor(np.asarray(pcm))
    if not audio.is_floating_point():
        audio = audio.float() / 32767.0
    with torch.no_grad():
        return LogMelSpectrogram()(audio.float())


def _pair(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
    ma, mb = log_mel(a), log_mel(b)
    n = min(ma.shape[1], mb.shape[1])
    return ma[:, :n].double(), mb[:, :n].double()


def log_mel_l1(reference: np.ndarray | torch.Tensor, test: np.ndarray | torch.Tensor) -> float:
    """Mean |log-mel(reference) - log-mel(test)| over all bins and frames."""
    ra, tb = _pair(reference, test)
    return float((ra - tb).abs().mean())


def _dct_matrix(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi / n * (i + 0.5) * k) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def mel_cepstral_distortion(
    reference: np.ndarray | torch.Tensor, test: np.ndarray | torch.Tensor
) -> float:
    """MCD in dB between two renderings (see the module docstring)."""
    ra, tb = _pair(reference, test)
    dct = _dct_matrix(ra.shape[0])[1 : _CEPSTRA + 1]
    diff = dct @ (ra - tb)  # [24, frames]
    per_frame = (10.0 / math.log(10.0)) * torch.sqrt(2.0 * diff.square().sum(dim=0))
    loudest = ra.max(dim=0).values
    voiced = loudest > loudest.max() - _SILENCE_BELOW_PEAK
    return float(per_frame[voiced].mean())
