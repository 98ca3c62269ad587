"""Output audio: sample-rate conversion (soxr) and WAV packaging."""

from __future__ import annotations

import io
import wave

import numpy as np
import soxr

from services.runtime.voice import SAMPLE_RATE_HZ

SUPPORTED_SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """A RIFF/WAV file holding int16 mono `pcm`."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype("<i2", copy=False).tobytes())
    return buf.getvalue()


def resample(pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    """Whole-utterance conversion from the voice's native rate (identity when equal)."""
    if sample_rate == SAMPLE_RATE_HZ:
        return pcm
    return soxr.resample(pcm, SAMPLE_RATE_HZ, sample_rate, quality="HQ")


class StreamResampler:
    """Chunk-by-chunk conversion that keeps filter state across chunks (no seams)."""

    def __init__(self, sample_rate: int) -> None:
        self._passthrough = sample_rate == SAMPLE_RATE_HZ
        self._stream = (
            None
            if self._passthrough
            else soxr.ResampleStream(SAMPLE_RATE_HZ, sample_rate, 1, dtype="int16", quality="HQ")
        )

    def process(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return pcm
        return self._stream.resample_chunk(pcm, last=last)
