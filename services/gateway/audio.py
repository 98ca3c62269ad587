"""Output audio: sample-rate conversion (soxr) and WAV packaging."""

from __future__ import annotations

import numpy as np
import soxr

SUPPORTED_SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


def resample(pcm: np.ndarray, native_rate: int, sample_rate: int) -> np.ndarray:
    """Whole-utterance conversion from the voice's native rate (identity when equal)."""
    if sample_rate == native_rate:
        return pcm
    return soxr.resample(pcm, native_rate, sample_rate, quality="HQ")


class StreamResampler:
    """Chunk-by-chunk conversion that keeps filter state across chunks (no seams)."""

    def __init__(self, native_rate: int, sample_rate: int) -> None:
        self._passthrough = sample_rate == native_rate
        self._stream = (
            None
            if self._passthrough
            else soxr.ResampleStream(native_rate, sample_rate, 1, dtype="int16", quality="HQ")
        )

    def process(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return pcm
        return self._stream.resample_chunk(pcm, last=last)
