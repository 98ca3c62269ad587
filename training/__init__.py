"""Voxline voice training: distil the Piper `en_US-joe-medium` teacher into the conv student.

The pipeline (``python -m training all`` runs every step; ``make train`` calls it):

1. ``corpus``   -- write the text corpus (deterministic generator + hand-written sentences),
                   normalised and split exactly as the frontend does, into train/val/test.
2. ``teacher``  -- read every sentence with the teacher (onnxruntime, with VITS's ``w_ceil``
                   exposed) -> phoneme ids, per-id durations in mel frames, HiFi-GAN log-mels.
3. ``train``    -- train the frontend (encoder + duration predictor) and the acoustic decoder
                   jointly, for a fixed wall-clock budget.
4. ``export``   -- fp16 safetensors + ``config.json`` into ``services/voices/voxline-en-us/``.
5. ``evaluate`` -- pocketsphinx word error rate of teacher and student (through the shipped
                   HiFi-GAN) on the held-out test sentences -> ``metrics.json``.

Generated data lives under ``build/training/`` (git-ignored); only the exported weights and
metrics are meant to be committed.
"""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning. On a shared 2-core machine spinning threads
# wait on each other: measured training steps went from ~3.3 s to 10-30 s without this. Only
# effective before torch is first imported, i.e. for `python -m training`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO_ROOT / "build" / "training"
MODEL_DIR = REPO_ROOT / "services" / "voices" / "voxline-en-us"
