"""The one WAV writer: 16-bit mono PCM in a RIFF/WAV container (stdlib `wave`)."""

from __future__ import annotations

import io
import wave

import numpy as np


def wav_bytes(pcm: np.ndarray | bytes, sample_rate: int) -> bytes:
    """A RIFF/WAV file holding int16 mono `pcm` (an int16 array, or s16le bytes)."""
    data = pcm if isinstance(pcm, bytes) else pcm.astype("<i2", copy=False).tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(data)
    return buf.getvalue()
