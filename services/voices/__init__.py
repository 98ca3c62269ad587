"""The voices Voxline ships, installed with the package as package data.

A voice is a folder ``<voice>/`` holding ``config.json`` (architecture, and for each trained
stage its weights file and sha256) and one safetensors file per trained stage. The folder of
voice folders is this package's directory, wherever the package is installed (editable,
site-packages, a container's venv), or ``$VOXLINE_MODEL_DIR`` when set (a mounted volume,
weights published apart from the image).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

#: Environment variable naming a folder of voice folders that replaces the shipped one.
MODEL_DIR_ENV = "VOXLINE_MODEL_DIR"


class VoiceNotFound(RuntimeError):
    """The requested voice's weights are missing, incomplete or corrupted."""


@dataclass(frozen=True)
class StageWeights:
    """One stage's weights file of a voice and the sha256 the voice's config promises."""

    path: Path
    sha256: str


def model_dir() -> Path:
    """The folder of voice folders: ``$VOXLINE_MODEL_DIR`` or this installed package."""
    override = os.environ.get(MODEL_DIR_ENV)
    return Path(override) if override else Path(str(files(__name__)))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_weights(voice: str, stage: str) -> StageWeights:
    """Locate and verify `stage`'s weights of `voice`.

    Raises:
        VoiceNotFound: no voice folder, no entry for the stage in its config, the file is
            missing, or its sha256 differs from the config's (a truncated copy, a Git LFS
            pointer): serving silently different weights is never an option.
    """
    folder = model_dir() / voice
    config_path = folder / "config.json"
    where = f"{folder} (set {MODEL_DIR_ENV} to a folder holding {voice}/)"
    if not config_path.is_file():
        raise VoiceNotFound(f"voice {voice!r} not found: no config.json in {where}")
    entry = json.loads(config_path.read_text()).get(stage)
    if not isinstance(entry, dict) or "file" not in entry:
        raise VoiceNotFound(f"voice {voice!r} has no {stage} weights listed in {config_path}")
    path = folder / entry["file"]
    if not path.is_file():
        raise VoiceNotFound(f"voice {voice!r}: {stage} weights missing: {path}")
    actual = file_sha256(path)
    if entry.get("sha256") and actual != entry["sha256"]:
        raise VoiceNotFound(
            f"voice {voice!r}: {path} has sha256 {actual}, config.json expects {entry['sha256']}"
        )
    return StageWeights(path=path, sha256=actual)
