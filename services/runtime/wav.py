"""The one WAV writer: 16-bit mono PCM in a RIFF/WAV container (stdlib `wave`)."""

from __future__ import annotations

import io
import wave

import numpy as np

#: Bytes before the samples in a file from `wav_bytes`: RIFF, fmt and data chunk headers.
WAV_HEADER_BYTES = 44
#: Bytes per sample (16-bit mono).
SAMPLE_BYTES = 2


def wav_bytes(pcm: np.ndarray | bytes, sample_rate: int) -> bytes:
    """A RIFF/WAV file holding int16 mono `pcm` (an int16 array, or s16le bytes); its header
    carries the real RIFF and data sizes (`wav_size` bytes in all)."""
    data = pcm if isinstance(pcm, bytes) else pcm.astype("<i2", copy=False).tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_BYTES)
        w.setframerate(sample_rate)
        w.writeframes(data)
    return buf.getvalue()


def wav_size(samples: int) -> int:
    """The size in bytes of `wav_bytes` for `samples` samples."""
    return WAV_HEADER_BYTES + SAMPLE_BYTES * samples
