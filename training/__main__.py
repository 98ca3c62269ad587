"""``python -m training STEP``: the voice pipeline.

Each step reads what the previous one wrote under ``--build-dir`` (default
``build/training``). ``all`` runs corpus, teacher, train, export and evaluate (the teacher
step is skipped when its output already matches the current corpus; ``--force``
regenerates). ``vocoder`` distils the fast CPU vocoder (training/vocoder.py): the corpus if
missing, then vocoder-data, vocoder-train, vocoder-export, vocoder-evaluate.
``voice-quality`` compares Piper with every shipped voice through a local stack
(training/voice_quality.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from training import BUILD_DIR, MODEL_DIR

_LOG = logging.getLogger("training")
SPLITS = ("train", "val", "test")


def _corpus(args: argparse.Namespace) -> None:
    from training.corpus import build_corpus

    corpus = build_corpus(templated=args.templated, prose=args.prose, seed=args.seed)
    corpus.write(args.build_dir / "corpus")
    _LOG.info(
        "corpus: %d train, %d val, %d test sentences -> %s",
        len(corpus.train),
        len(corpus.val),
        len(corpus.test),
        args.build_dir / "corpus",
    )


def _corpus_hash(corpus_dir: Path, scales: tuple[float, ...]) -> str:
    h = hashlib.sha256(json.dumps(scales).encode())
    for split in SPLITS:
        h.update((corpus_dir / f"{split}.txt").read_bytes())
    return h.hexdigest()[:16]


def _teacher(args: argparse.Namespace) -> None:
    from training.corpus import read_split
    from training.teacher import Teacher, generate_split

    corpus_dir, out_dir = args.build_dir / "corpus", args.build_dir / "teacher"
    scales = tuple(args.scales)
    stamp = out_dir / "stamp.json"
    digest = _corpus_hash(corpus_dir, scales)
    if not args.force and stamp.exists() and json.loads(stamp.read_text())["hash"] == digest:
        _LOG.info("teacher: data for this corpus already in %s (use --force to redo)", out_dir)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(threads=args.threads, seed=args.seed)
    start = time.monotonic()
    stats = {}
    for split in SPLITS:
        sentences = read_split(corpus_dir, split)
        # Test WAVs are kept: the evaluation transcribes the teacher's own audio too.
        wav_dir = out_dir / "test_wav" if split == "test" else None
        examples = generate_split(sentences, teacher, scales=scales, wav_dir=wav_dir)
        torch.save([asdict(e) for e in examples], out_dir / f"{split}.pt")
        frames = sum(int(e.durations.sum()) for e in examples)
        stats[split] = {"sentences": len(examples), "audio_s": round(frames * 256 / 22050, 1)}
        _LOG.info("teacher: %s: %s", split, stats[split])
    elapsed = time.monotonic() - start
    stamp.write_text(
        json.dumps({"hash": digest, "scales": scales, "splits": stats, "seconds": elapsed}) + "\n"
    )
    _LOG.info("teacher: done in %.0f s", elapsed)


def _train(args: argparse.Namespace) -> None:
    from training.train import TrainConfig, train

    cfg = TrainConfig(
        minutes=args.minutes, max_steps=args.max_steps, seed=args.seed, threads=args.threads
    )
    train(args.build_dir / "teacher", args.build_dir / "checkpoints", cfg)


def _export(args: argparse.Namespace) -> None:
    from training.export import export

    export(args.build_dir / "checkpoints" / "student.pt", args.model_dir)


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate

    evaluate(args.build_dir, args.model_dir, threads=args.threads)


def _all(args: argparse.Namespace) -> None:
    for step in (_corpus, _teacher, _train, _export, _evaluate):
        step(args)


def _vocoder_data(args: argparse.Namespace) -> None:
    from training.vocoder import build_vocoder_data

    build_vocoder_data(
        args.build_dir, args.model_dir, args.vocoder_sentences, args.threads, args.seed
    )


def _vocoder_train(args: argparse.Namespace) -> None:
    from training.vocoder import VocoderTrainConfig, train_vocoder

    cfg = VocoderTrainConfig(
        minutes=args.vocoder_minutes, max_steps=args.vocoder_steps, seed=args.seed,
        threads=args.threads,
    )  # fmt: skip
    train_vocoder(args.build_dir / "vocoder", args.build_dir / "checkpoints", cfg)


def _vocoder_export(args: argparse.Namespace) -> None:
    from training.vocoder import export_vocoder

    export_vocoder(args.build_dir / "checkpoints" / "vocoder.pt", args.model_dir)


def _vocoder_evaluate(args: argparse.Namespace) -> None:
    from training import REPO_ROOT
    from training.vocoder_eval import evaluate_vocoder

    evaluate_vocoder(args.build_dir, args.model_dir, REPO_ROOT / "docs", threads=args.threads)


def _vocoder(args: argparse.Namespace) -> None:
    if not (args.build_dir / "corpus" / "train.txt").exists():
        _corpus(args)
    for step in (_vocoder_data, _vocoder_train, _vocoder_export, _vocoder_evaluate):
        step(args)


def _voice_quality(args: argparse.Namespace) -> None:
    """Piper and every shipped voice side by side through a local stack (docs/models.md)."""
    import tempfile

    from services.cli.stack import LocalStack
    from services.voices.catalog import available
    from training import REPO_ROOT
    from training.voice_quality import compare, summary, write

    voices = [entry.name for entry in available()]
    with (
        tempfile.TemporaryDirectory() as run_dir,
        LocalStack(Path(run_dir), env={"VOXLINE_VOICES": "all"}) as stack,
    ):
        report = compare(stack.gateway, voices, draws=args.draws)
    out = REPO_ROOT / "docs" / "voice-quality.json"
    write(report, out)
    _LOG.info("voice quality -> %s\n%s", out, summary(report))


STEPS = {
    "corpus": _corpus,
    "teacher": _teacher,
    "train": _train,
    "export": _export,
    "evaluate": _evaluate,
    "all": _all,
    "vocoder-data": _vocoder_data,
    "vocoder-train": _vocoder_train,
    "vocoder-export": _vocoder_export,
    "vocoder-evaluate": _vocoder_evaluate,
    "vocoder": _vocoder,
    "voice-quality": _voice_quality,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("step", choices=tuple(STEPS))
    parser.add_argument("--build-dir", type=Path, default=BUILD_DIR)
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch/onnxruntime threads")
    parser.add_argument("--templated", type=int, default=1400, help="generated sentences")
    parser.add_argument("--prose", type=int, default=350, help="Python-docs prose sentences")
    parser.add_argument(
        "--scales",
        type=float,
        nargs=3,
        default=None,
        metavar=("NOISE", "LENGTH", "NOISE_W"),
        help="teacher scales (default 0.333 1.0 0.333)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate teacher data")
    parser.add_argument(
        "--minutes", type=float, default=40.0, help="training wall-clock cap (minutes)"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=1200,
        help="training steps; the LR schedule follows steps or time, whichever is further "
        "along (0: time only)",
    )
    parser.add_argument(
        "--vocoder-sentences", type=int, default=1000, help="teacher sentences for the vocoder"
    )
    parser.add_argument(
        "--vocoder-minutes", type=float, default=36.0, help="vocoder training cap (minutes)"
    )
    parser.add_argument("--vocoder-steps", type=int, default=6000, help="vocoder training steps")
    parser.add_argument("--draws", type=int, default=3, help="voice-quality: readings per sentence")
    args = parser.parse_args(argv)
    if args.scales is None:
        from training.teacher import DEFAULT_SCALES

        args.scales = list(DEFAULT_SCALES)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    STEPS[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
