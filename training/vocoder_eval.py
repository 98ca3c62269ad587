"""Evaluate the fast vocoder against HiFi-GAN: intelligibility, spectral distance, speed.

On the held-out test sentences (`training.corpus.HELD_OUT`, never trained on) the shipped
frontend and acoustic stages make each sentence's mel once; both vocoders render it (the
services' own `VocoderStage`, in process):

* pocketsphinx WER of each rendering (16 kHz);
* log-mel L1 and mel-cepstral distortion of the fast rendering against HiFi-GAN's
  (`training.spectral`);
* vocoder real-time factor of each (2 threads, wall time / audio time);
* with the vocoder training data at hand (``build/training/vocoder/val.pt``): both
  vocoders' copy synthesis of held-out teacher mels against the teacher's real audio.

Writes ``vocoder_fast`` into the voice's ``metrics.json`` and a PNG of spectrograms side by
side (``docs/vocoder-spectrograms.png``). ``python -m training vocoder-evaluate``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from services.runtime.voice import SAMPLE_RATE_HZ
from services.vocoder.mel import MelConfig
from services.vocoder.stage import VocoderStage
from training.asr import Recognizer, wer
from training.corpus import HELD_OUT
from training.evaluate import StudentVoice
from training.spectral import log_mel, log_mel_l1, mel_cepstral_distortion

__all__ = ["evaluate_vocoder"]

_LOG = logging.getLogger(__name__)
_PLOTTED = 3


def _vocoders(model_dir: Path) -> tuple[StudentVoice, dict[str, VocoderStage]]:
    """The student with HiFi-GAN (which makes the mels), and both vocoders, warm."""
    from training.vocoder import VOCODER_FILE

    voice = StudentVoice(model_dir, vocoder="hifigan")
    fast = VocoderStage(vocoder="fast", device="cpu", checkpoint=str(model_dir / VOCODER_FILE))
    fast.load()
    vocoders = {"hifigan": voice.vocoder, "fast": fast}
    for stage in vocoders.values():
        stage.warmup()
    return voice, vocoders


def _render(stage: VocoderStage, mels: list[torch.Tensor]) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    pcm = np.concatenate([stage.infer(m).numpy() for m in mels])
    return pcm, time.perf_counter() - t0


def _copy_synthesis(
    vocoders: dict[str, VocoderStage], data_dir: Path, count: int = 16
) -> dict | None:
    path = data_dir / "val.pt"
    if not path.exists():
        return None
    examples = torch.load(path, weights_only=False)[-count:]
    out: dict[str, dict[str, float]] = {}
    for name in ("hifigan", "fast"):
        l1, mcd = [], []
        for e in examples:
            pcm = vocoders[name].infer(e["mel"].float()).numpy()
            l1.append(log_mel_l1(e["audio"].numpy(), pcm))
            mcd.append(mel_cepstral_distortion(e["audio"].numpy(), pcm))
        out[name] = {"log_mel_l1": round(float(np.mean(l1)), 4),
                     "mcd_db": round(float(np.mean(mcd)), 3)}  # fmt: skip
    out["sentences"] = len(examples)  # type: ignore[assignment]
    return out


def _plot(rows: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 2.6 * len(rows)), squeeze=False)
    for r, (text, hifi, fast) in enumerate(rows):
        for c, (name, pcm) in enumerate((("HiFi-GAN V1", hifi), ("fast vocoder", fast))):
            ax = axes[r][c]
            ax.imshow(log_mel(pcm).numpy(), origin="lower", aspect="auto", cmap="magma",
                      vmin=MelConfig().log_floor, vmax=2,
                      extent=(0, len(pcm) / SAMPLE_RATE_HZ, 0, 80))  # fmt: skip
            ax.set_title(f"{name}: {text[:48]}", fontsize=9)
            ax.set_xlabel("s")
            ax.set_ylabel("mel band")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def evaluate_vocoder(build_dir: Path, model_dir: Path, docs_dir: Path, threads: int = 2) -> dict:
    """Score both vocoders on the held-out sentences; update metrics.json; draw the PNG."""
    torch.set_num_threads(threads)
    voice, vocoders = _vocoders(model_dir)
    asr = Recognizer()
    rows, plotted = [], []
    seconds = {"hifigan": 0.0, "fast": 0.0}
    audio_s = 0.0
    from services.frontend.normalize import normalize

    for i, text in enumerate(HELD_OUT):
        reference = normalize(text)
        mels = voice.mels(text)
        # Alternate which vocoder runs first, so neither always meets a warmer cache.
        order = ("hifigan", "fast") if i % 2 == 0 else ("fast", "hifigan")
        pcm: dict[str, np.ndarray] = {}
        for name in order:
            pcm[name], elapsed = _render(vocoders[name], mels)
            seconds[name] += elapsed
        audio_s += len(pcm["fast"]) / SAMPLE_RATE_HZ
        row = {"text": text}
        for name in ("hifigan", "fast"):
            hyp = asr.transcribe(pcm[name], SAMPLE_RATE_HZ)
            row[f"{name}_hyp"], row[f"{name}_wer"] = hyp, round(wer(reference, hyp), 4)
        row["log_mel_l1"] = round(log_mel_l1(pcm["hifigan"], pcm["fast"]), 4)
        row["mcd_db"] = round(mel_cepstral_distortion(pcm["hifigan"], pcm["fast"]), 3)
        _LOG.info("vocoder-eval: %s", json.dumps(row))
        rows.append(row)
        if len(plotted) < _PLOTTED:
            plotted.append((text, pcm["hifigan"], pcm["fast"]))

    def mean(key: str) -> float:
        return round(float(np.mean([r[key] for r in rows])), 4)

    result = {
        "sentences": len(rows),
        "asr": "pocketsphinx (bundled en-us models), 16 kHz; in process, same mels for both",
        "hifigan_wer": mean("hifigan_wer"),
        "fast_wer": mean("fast_wer"),
        "fast_vs_hifigan": {"log_mel_l1": mean("log_mel_l1"), "mcd_db": mean("mcd_db")},
        "vocoder_rtf": {name: round(s / audio_s, 4) for name, s in seconds.items()},
        "speedup": round(seconds["hifigan"] / seconds["fast"], 1),
        "threads": threads,
        "copy_synthesis_vs_teacher_audio": _copy_synthesis(vocoders, build_dir / "vocoder"),
        "by_sentence": rows,
    }
    metrics_path = model_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics["vocoder_fast"] = result
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    _plot(plotted, docs_dir / "vocoder-spectrograms.png")
    summary = {k: v for k, v in result.items() if k != "by_sentence"}
    _LOG.info("vocoder-eval: %s", json.dumps(summary))
    return result
