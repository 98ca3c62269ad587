"""Held-out evaluation: pocketsphinx WER of the teacher and of the exported student.

Three systems read the held-out test sentences (never trained on):

* ``teacher`` -- the Piper voice's own waveform (kept by the teacher step);
* ``teacher_mel_hifigan`` -- the teacher's log-mel through our HiFi-GAN (copy synthesis:
  the best the student could do with this vocoder);
* ``student`` -- the exported checkpoints run by the services' own stage classes in process
  (`FrontendStage` -> `AcousticStage` -> `VocoderStage`), i.e. the real inference code path
  without gRPC.

Everything is transcribed at 16 kHz. Results go to ``metrics.json`` in the model directory.
"""

from __future__ import annotations

import json
import logging
import time
import wave
from pathlib import Path

import numpy as np
import torch

from training.asr import Recognizer, wer
from training.corpus import HELD_OUT, read_split
from training.export import ACOUSTIC_FILE, CONFIG_FILE, FRONTEND_FILE

__all__ = ["StudentVoice", "evaluate"]

_LOG = logging.getLogger(__name__)


class StudentVoice:
    """The exported student + a vocoder (HiFi-GAN unless told), through the services' stage
    classes, in process."""

    def __init__(self, model_dir: Path, vocoder: str = "hifigan") -> None:
        from services.acoustic.stage import AcousticStage
        from services.frontend.stage import FrontendStage
        from services.vocoder.stage import VocoderStage

        self.frontend = FrontendStage(device="cpu", checkpoint=str(model_dir / FRONTEND_FILE))
        self.acoustic = AcousticStage(device="cpu", checkpoint=str(model_dir / ACOUSTIC_FILE))
        self.vocoder = VocoderStage(vocoder=vocoder, device="cpu")
        for stage in (self.frontend, self.acoustic, self.vocoder):
            stage.load()

    def mels(self, text: str) -> list[torch.Tensor]:
        """Raw text -> the acoustic model's log-mel of each sentence."""
        return [
            self.acoustic.generate(sentence.features, sentence.durations)
            for sentence in self.frontend.encode(self.frontend.prepare(text), 1.0)
        ]

    def synthesize(self, text: str) -> np.ndarray:
        """Raw text -> int16 PCM at 22050 Hz (sentences concatenated)."""
        return np.concatenate([self.vocode(mel) for mel in self.mels(text)])

    def vocode(self, mel: torch.Tensor) -> np.ndarray:
        return self.vocoder.infer(mel).numpy()


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def evaluate(build_dir: Path, model_dir: Path, threads: int = 2) -> dict:
    """Score teacher, copy synthesis and student on the test split; write metrics.json."""
    torch.set_num_threads(threads)
    start = time.monotonic()
    sentences = read_split(build_dir / "corpus", "test")
    examples = torch.load(build_dir / "teacher" / "test.pt", weights_only=False)
    assert [e["text"] for e in examples] == sentences
    asr = Recognizer()
    voice = StudentVoice(model_dir)
    rows = []
    for i, (raw, example) in enumerate(zip(HELD_OUT, examples, strict=True)):
        ref = example["text"]
        teacher_audio = _read_wav(build_dir / "teacher" / "test_wav" / f"{i:04d}.wav")
        copy_audio = voice.vocode(example["mel"].float())
        t0 = time.perf_counter()
        student_audio = voice.synthesize(raw)
        synth_s = time.perf_counter() - t0
        hyps = {
            "teacher": asr.transcribe(teacher_audio, 22050),
            "teacher_mel_hifigan": asr.transcribe(copy_audio, 22050),
            "student": asr.transcribe(student_audio, 22050),
        }
        row = {
            "text": raw,
            "reference": ref,
            **{f"{k}_hyp": v for k, v in hyps.items()},
            **{f"{k}_wer": round(wer(ref, v), 4) for k, v in hyps.items()},
            "teacher_s": round(len(teacher_audio) / 22050, 2),
            "student_s": round(len(student_audio) / 22050, 2),
            "student_synth_s": round(synth_s, 3),
        }
        _LOG.info("eval: %s", json.dumps(row))
        rows.append(row)
    systems = ("teacher", "teacher_mel_hifigan", "student")
    summary = {f"{k}_wer": round(float(np.mean([r[f"{k}_wer"] for r in rows])), 4) for k in systems}
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    metrics_path = model_dir / "metrics.json"
    # Entries this evaluation does not write (the fast vocoder's, training/vocoder_eval.py)
    # are kept.
    previous = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics = {
        **previous,
        "test_sentences": len(rows),
        "asr": "pocketsphinx (bundled en-us models), 16 kHz",
        **summary,
        "duration_ratio_student_over_teacher": round(
            sum(r["student_s"] for r in rows) / sum(r["teacher_s"] for r in rows), 3
        ),
        "training": config.get("training", {}),
        "sentences": rows,
    }
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    _LOG.info("eval: %s in %.0f s", summary, time.monotonic() - start)
    return metrics
