"""Distil the fast CPU vocoder (`services.vocoder.fast.FastVocoder`) from the Piper teacher.

Steps (``python -m training vocoder`` runs all three; ``make train-vocoder`` calls it):

1. ``vocoder-data``  -- the teacher reads the training sentences; each example keeps the
   teacher's waveform (the target), the HiFi-GAN log-mel of that waveform and the mel our
   trained acoustic model predicts for the same sentence *with the teacher's durations* (so
   it lines up frame by frame with the waveform). Training on both closes the gap between
   the clean mels of analysis and the smoother mels the vocoder is served.
2. ``vocoder-train`` -- random 48-frame segments; loss = multi-resolution STFT loss (spectral
   convergence + log-magnitude L1 at three resolutions) + 2 x log-mel L1; no discriminator.
   AdamW, warm-up + cosine, an EMA of the weights is what is kept.
3. ``vocoder-export`` -- fp16 safetensors into the voice folder, listed in its config.json
   under ``vocoder``.

The targets are the teacher's own audio, not HiFi-GAN's output for the same mels: the
student then learns the voice, not HiFi-GAN's artifacts (docs/models.md, "Fast vocoder").
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from services.runtime.device import resolve_device
from services.runtime.voice import HOP_LENGTH, SAMPLE_RATE_HZ
from services.vocoder.fast import FastVocoder, FastVocoderConfig
from services.vocoder.mel import LogMelSpectrogram

__all__ = [
    "VOCODER_FILE",
    "VocoderTrainConfig",
    "build_vocoder_data",
    "export_vocoder",
    "train_vocoder",
]

_LOG = logging.getLogger(__name__)

VOCODER_FILE = "vocoder-fast.safetensors"
_PCM_SCALE = 32767.0


@dataclass
class VocoderTrainConfig:
    """Hyperparameters of one vocoder training run."""

    minutes: float = 36.0  # wall-clock cap
    max_steps: int = 6000  # the LR schedule follows steps or time, whichever is further along
    seed: int = 0
    threads: int = 2
    device: str = "auto"  # cuda:0 when present (much faster), else CPU
    batch_size: int = 16
    segment_frames: int = 48
    predicted_mel_fraction: float = 0.5  # share of segments fed the acoustic model's mel
    lr: float = 8e-4
    warmup_steps: int = 200
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mel_weight: float = 2.0
    eval_every_s: float = 300.0


# -- data -------------------------------------------------------------------------------------


@torch.no_grad()
def _predicted_mels(examples: list[dict], model_dir: Path) -> list[torch.Tensor]:
    """The trained acoustic model's mel for each example, with the teacher's durations."""
    from services.runtime.checkpoint import load_checked, read_state_dict
    from training.export import ACOUSTIC_FILE, FRONTEND_FILE
    from training.train import Student, collate

    config = json.loads((model_dir / "config.json").read_text())
    student = Student(config["frontend"]["config"], config["acoustic"]["config"])
    load_checked(student.frontend, read_state_dict(model_dir / FRONTEND_FILE), FRONTEND_FILE)
    load_checked(student.acoustic, read_state_dict(model_dir / ACOUSTIC_FILE), ACOUSTIC_FILE)
    student.eval()
    out = []
    for k in range(0, len(examples), 8):
        group = examples[k : k + 8]
        _, _, mel_post, _ = student(collate(group))
        for row, e in enumerate(group):
            frames = int(e["mel"].shape[1])
            out.append(mel_post[row, :frames].T.contiguous().to(torch.float16))
    return out


def build_vocoder_data(
    build_dir: Path, model_dir: Path, sentences: int, threads: int, seed: int
) -> Path:
    """Teacher audio + analysis mel + predicted mel for the train and val splits."""
    from training.corpus import read_split
    from training.teacher import Teacher, generate_split

    out_dir = build_dir / "vocoder"
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(threads=threads, seed=seed)
    limits = {"train": sentences, "val": max(16, sentences // 20)}
    for split, limit in limits.items():
        start = time.monotonic()
        texts = read_split(build_dir / "corpus", split)[:limit]
        examples = [asdict(e) for e in generate_split(texts, teacher, keep_audio=True)]
        for e, predicted in zip(examples, _predicted_mels(examples, model_dir), strict=True):
            e["predicted_mel"] = predicted
        torch.save(examples, out_dir / f"{split}.pt")
        seconds = sum(int(e["audio"].numel()) for e in examples) / SAMPLE_RATE_HZ
        _LOG.info("vocoder-data: %s: %d sentences, %.0f s of audio in %.0f s", split,
                  len(examples), seconds, time.monotonic() - start)  # fmt: skip
    return out_dir


# -- losses -----------------------------------------------------------------------------------

_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))


def _magnitude(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(audio, n_fft, hop, window=window, return_complex=True)
    return spec.abs().clamp(min=1e-7)


def multi_resolution_stft_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over three STFT resolutions of spectral convergence + log-magnitude L1."""
    total = predicted.new_zeros(())
    for n_fft, hop in _RESOLUTIONS:
        p, t = _magnitude(predicted, n_fft, hop), _magnitude(target, n_fft, hop)
        convergence = torch.linalg.norm(t - p) / torch.linalg.norm(t)
        total = total + convergence + F.l1_loss(p.log(), t.log())
    return total / len(_RESOLUTIONS)


# -- training ---------------------------------------------------------------------------------


class _Segments:
    """Random fixed-length training segments: (mel [B, 80, n], audio [B, n * hop])."""

    def __init__(self, examples: list[dict], frames: int, predicted_fraction: float) -> None:
        self.examples = [e for e in examples if int(e["mel"].shape[1]) >= frames]
        self.frames = frames
        self.predicted_fraction = predicted_fraction
        self.weights = [int(e["mel"].shape[1]) - frames + 1 for e in self.examples]

    def sample(self, rng: random.Random, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = []
        for e in rng.choices(self.examples, weights=self.weights, k=batch):
            start = rng.randrange(int(e["mel"].shape[1]) - self.frames + 1)
            source = "predicted_mel" if rng.random() < self.predicted_fraction else "mel"
            pairs.append(self._segment(e, source, start))
        mels, audios = zip(*pairs, strict=True)
        return torch.stack(mels), torch.stack(audios)

    def _segment(self, e: dict, source: str, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`self.frames` frames of `e[source]` from `start`, and their audio in [-1, 1]."""
        end = start + self.frames
        pcm = e["audio"][start * HOP_LENGTH : end * HOP_LENGTH]
        return e[source][:, start:end].float(), pcm.float() / _PCM_SCALE

    def fixed(self, count: int, source: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Deterministic validation batches (the middle segment of each example)."""
        out = []
        for e in self.examples[:count]:
            mel, pcm = self._segment(e, source, (int(e["mel"].shape[1]) - self.frames) // 2)
            out.append((mel[None], pcm[None]))
        return out


def _losses(
    model: FastVocoder, mel_fn: LogMelSpectrogram, mel: torch.Tensor, audio: torch.Tensor,
    cfg: VocoderTrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    predicted = model(mel)
    stft = multi_resolution_stft_loss(predicted, audio)
    mel_l1 = F.l1_loss(mel_fn(predicted), mel_fn(audio))
    total = stft + cfg.mel_weight * mel_l1
    return total, {"stft": stft.item(), "mel_l1": mel_l1.item()}


@torch.no_grad()
def _validate(
    model: FastVocoder, mel_fn: LogMelSpectrogram, val: _Segments, cfg: VocoderTrainConfig
) -> dict[str, float]:
    out = {}
    for source in ("mel", "predicted_mel"):
        device = next(model.parameters()).device
        batches = val.fixed(64, source)
        parts = [_losses(model, mel_fn, m.to(device), a.to(device), cfg)[1] for m, a in batches]
        out[f"{source}_mel_l1"] = round(sum(p["mel_l1"] for p in parts) / len(parts), 4)
    return out


def train_vocoder(data_dir: Path, out_dir: Path, cfg: VocoderTrainConfig) -> Path:
    """Train for `cfg.minutes` and/or `cfg.max_steps`; write ``vocoder.pt`` into `out_dir`."""
    from training.train import lr_factor, optimise, record, smooth

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    train_set = _Segments(torch.load(data_dir / "train.pt", weights_only=False),
                          cfg.segment_frames, cfg.predicted_mel_fraction)  # fmt: skip
    val_set = _Segments(torch.load(data_dir / "val.pt", weights_only=False), cfg.segment_frames, 0)
    audio_min = sum(int(e["audio"].numel()) for e in train_set.examples) / SAMPLE_RATE_HZ / 60
    _LOG.info("vocoder-train: %d sentences, %.1f min of audio", len(train_set.examples), audio_min)

    device = resolve_device(cfg.device)
    model = FastVocoder()
    model.reset_parameters(cfg.seed)
    model.to(device).train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    mel_fn = LogMelSpectrogram().to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.8, 0.99),
    )  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    _LOG.info("vocoder-train: %.2fM parameters", params / 1e6)

    start = last_eval = time.monotonic()
    step = 0
    running: dict[str, float] = {}
    history: list[dict] = []
    while True:
        progress = max((time.monotonic() - start) / (cfg.minutes * 60), step / cfg.max_steps)
        if progress >= 1.0:
            break
        for g in optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, progress, cfg.warmup_steps, cfg.final_lr_fraction)
        mel, audio = train_set.sample(rng, cfg.batch_size)
        loss, parts = _losses(model, mel_fn, mel.to(device), audio.to(device), cfg)
        step += 1
        optimise(model, ema, optimizer, loss, step, cfg.grad_clip, cfg.ema_decay)
        smooth(running, parts)
        if time.monotonic() - last_eval >= cfg.eval_every_s:
            last_eval = time.monotonic()
            history.append(
                record("vocoder-train", step, start, running, _validate(ema, mel_fn, val_set, cfg))
            )
            _save(out_dir, ema, cfg, step, start, params, audio_min, history)
    history.append(
        record("vocoder-train", step, start, running, _validate(ema, mel_fn, val_set, cfg))
    )
    return _save(out_dir, ema, cfg, step, start, params, audio_min, history)


def _save(
    out_dir: Path, ema: FastVocoder, cfg: VocoderTrainConfig, step: int, start: float,
    params: int, audio_min: float, history: list[dict],
) -> Path:  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "steps": step,
        "minutes": round((time.monotonic() - start) / 60, 2),
        "parameters": params,
        "train_audio_min": round(audio_min, 1),
        "config": asdict(cfg),
        "history": history,
    }
    path = out_dir / "vocoder.pt"
    state = {k: v.cpu() for k, v in ema.state_dict().items()}
    torch.save({"state_dict": state, "config": ema.config.to_dict(),
                "summary": summary}, path)  # fmt: skip
    return path


# -- export -----------------------------------------------------------------------------------


def export_vocoder(checkpoint: Path, model_dir: Path) -> Path:
    """vocoder.pt -> fp16 ``vocoder-fast.safetensors``, listed in the voice's config.json."""
    from safetensors.torch import save_file

    from services.runtime.checkpoint import load_checked, read_state_dict
    from services.voices import file_sha256

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if ckpt["config"] != FastVocoderConfig().to_dict():
        raise ValueError("trained config differs from the service's FastVocoderConfig defaults")
    path = model_dir / VOCODER_FILE
    tensors = {k: v.to(torch.float16).contiguous() for k, v in ckpt["state_dict"].items()}
    save_file(tensors, str(path), metadata={"model": "fast-vocoder",
                                            "config": json.dumps(ckpt["config"])})  # fmt: skip
    path.chmod(0o644)  # safetensors writes 0600; the image's service user must read it
    load_checked(FastVocoder(), read_state_dict(path), VOCODER_FILE)  # loads as the service does
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    summary = {k: v for k, v in ckpt["summary"].items() if k != "history"}
    config["vocoder"] = {
        "file": VOCODER_FILE,
        "sha256": file_sha256(path),
        "model": "fast",
        "config": ckpt["config"],
        "training": summary,
        "history": ckpt["summary"]["history"],
    }
    config_path.write_text(json.dumps(config, indent=1) + "\n")
    _LOG.info("vocoder-export: %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
