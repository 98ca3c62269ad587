"""Side by side: Piper itself and the voices a Voxline stack serves, on held-out sentences.

``python -m training voice-quality`` (docs/models.md, "Voices compared"). Every system reads
every held-out sentence (`training.corpus.HELD_OUT`, never trained on) ``draws`` times with
different noise draws, at its own noise settings (Piper's: its voice's defaults):

* ``piper``: the unmodified Piper ONNX voice run with onnxruntime on the frontend's phoneme
  ids: what a Piper user hears.
* each served voice, through the real stack (gateway -> frontend -> acoustic -> vocoder),
  with ``seed`` = the draw number (VITS voices; the student has no noise).

Scores per system, averaged over sentences and draws: pocketsphinx word error rate (16 kHz,
training/asr.py), Praat harmonics-to-noise ratio and CPPS (training/voice_measures.py) at
the native rate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from services.cli.client import synthesize
from services.frontend.normalize import normalize
from training.asr import Recognizer, wer
from training.corpus import HELD_OUT
from training.teacher import piper_scales
from training.voice_measures import measure

#: One reading: (sentence, draw) -> (int16 PCM, sample rate).
Reader = Callable[[str, int], tuple[np.ndarray, int]]


@dataclass
class SystemScore:
    """One system's scores (means over sentences and draws) and each reading's."""

    name: str
    wer: float = 0.0
    hnr_db: float = 0.0
    cpps_db: float = 0.0
    readings: list[dict] = field(default_factory=list)


def piper_reader(threads: int = 2, seed: int = 0) -> Reader:
    """Piper's voice in onnxruntime, on the frontend's phoneme ids (one sentence each)."""
    from services.frontend.analyzer import TextAnalyzer
    from training.teacher import Teacher

    teacher, analyzer, scales = Teacher(threads=threads, seed=seed), TextAnalyzer(), piper_scales()

    def read(text: str, draw: int) -> tuple[np.ndarray, int]:
        pieces = [
            teacher.synthesize([s.phoneme_ids.tolist()], scales)[0][0]
            for s in analyzer.prepare_iter(text)
        ]
        audio = np.concatenate(pieces)
        return (np.clip(audio, -1, 1) * 32767).round().astype(np.int16), teacher.sample_rate

    return read


def stack_reader(gateway: str, voice: str) -> Reader:
    """`voice` through a running stack's gateway, unary, at the voice's native rate."""

    def read(text: str, draw: int) -> tuple[np.ndarray, int]:
        result = synthesize(gateway, text, voice=voice, seed=draw, timeout=120)
        return np.frombuffer(result.pcm, dtype="<i2"), result.sample_rate

    return read


def score(name: str, read: Reader, asr: Recognizer, draws: int = 2) -> SystemScore:
    """Read every held-out sentence `draws` times and score each reading."""
    result = SystemScore(name)
    for text in HELD_OUT:
        reference = normalize(text)
        for draw in range(draws):
            pcm, rate = read(text, draw)
            transcript = asr.transcribe(pcm, rate)
            measures = measure(pcm, rate)
            result.readings.append(
                {
                    "sentence": HELD_OUT.index(text),
                    "draw": draw,
                    "wer": wer(reference, transcript),
                    "hnr_db": measures.hnr_db,
                    "cpps_db": measures.cpps_db,
                    "transcript": transcript,
                }
            )
    for key in ("wer", "hnr_db", "cpps_db"):
        setattr(result, key, float(np.mean([r[key] for r in result.readings])))
    return result


def compare(gateway: str, voices: list[str], draws: int = 2) -> dict:
    """Piper and each of `voices` through the stack at `gateway`; a JSON-ready summary."""
    asr = Recognizer()
    systems = [score("piper", piper_reader(), asr, draws)]
    systems += [score(v, stack_reader(gateway, v), asr, draws) for v in voices]
    return {
        "sentences": len(HELD_OUT),
        "draws": draws,
        "piper_scales": piper_scales(),
        "systems": [asdict(s) for s in systems],
    }


def summary(report: dict) -> str:
    """A table of the report's means."""
    lines = [f"{'system':<22} {'WER':>6} {'HNR dB':>7} {'CPPS dB':>8}"]
    for s in report["systems"]:
        lines.append(f"{s['name']:<22} {s['wer']:>6.3f} {s['hnr_db']:>7.2f} {s['cpps_db']:>8.2f}")
    return "\n".join(lines)


def write(report: dict, path) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n")
