"""A VITS voice folder (written by ``voxline voices import``) and loading its parts.

``<voice>/config.json`` (`VitsVoiceConfig`, ``format_version`` 2, ``architecture`` "vits")
names one safetensors file per stage with its sha256; `load_part` builds a stage's part from
the config and loads its weights strictly, after checking the file's digest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from services.vits.config import VitsConfig
from services.vits.parts import build_part
from services.voices import file_sha256

__all__ = [
    "FORMAT_VERSION",
    "STAGES",
    "InferenceDefaults",
    "PhonemeConfig",
    "SourceInfo",
    "Stage",
    "VitsVoiceConfig",
    "VoiceFolderError",
    "WeightsFile",
    "load_part",
]

FORMAT_VERSION = 2
Stage = Literal["frontend", "acoustic", "vocoder"]
STAGES: tuple[Stage, ...] = ("frontend", "acoustic", "vocoder")


class VoiceFolderError(RuntimeError):
    """A voice folder is incomplete, corrupted or of another format; the message says which."""


@dataclass(frozen=True)
class PhonemeConfig:
    """How text becomes ids: espeak-ng IPA, one code point at a time through `id_map`."""

    type: str
    espeak_voice: str
    id_map: dict[str, list[int]]


@dataclass(frozen=True)
class InferenceDefaults:
    """The voice's default noise and speed scales (Piper's ``inference`` block)."""

    noise_scale: float
    length_scale: float
    noise_w: float


@dataclass(frozen=True)
class WeightsFile:
    """One stage's weights file, relative to the folder, and its promised sha256."""

    file: str
    sha256: str


@dataclass(frozen=True)
class SourceInfo:
    """Where the weights came from."""

    onnx: str
    sha256: str
    importer: str


@dataclass(frozen=True)
class VitsVoiceConfig:
    """The fields of a VITS voice folder's ``config.json``."""

    voice: str
    language_code: str
    sample_rate_hz: int
    hop_length: int
    latent_channels: int
    phonemes: PhonemeConfig
    inference: InferenceDefaults
    speakers: dict[str, int]
    model: VitsConfig
    frontend: WeightsFile
    acoustic: WeightsFile
    vocoder: WeightsFile
    source: SourceInfo
    model_card: str | None = None
    dtype: str = "float32"
    format_version: int = FORMAT_VERSION
    architecture: str = field(default="vits")

    def weights(self, stage: Stage) -> WeightsFile:
        return {"frontend": self.frontend, "acoustic": self.acoustic, "vocoder": self.vocoder}[
            stage
        ]

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` dict (key order as documented in the voice format)."""
        data = asdict(self)
        data["model"] = self.model.to_json()
        head = ("format_version", "architecture", "voice", "language_code")
        return {**{k: data.pop(k) for k in head}, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VitsVoiceConfig:
        """Parse ``config.json``; raises `VoiceFolderError` on another format."""
        if data.get("architecture") != "vits" or data.get("format_version") != FORMAT_VERSION:
            raise VoiceFolderError(
                f"not a VITS voice folder of format {FORMAT_VERSION}: architecture "
                f"{data.get('architecture')!r}, format_version {data.get('format_version')!r}"
            )
        try:
            return cls(
                **{
                    **data,
                    "phonemes": PhonemeConfig(**data["phonemes"]),
                    "inference": InferenceDefaults(**data["inference"]),
                    "model": VitsConfig.from_json(data["model"]),
                    "source": SourceInfo(**data["source"]),
                    **{s: WeightsFile(**data[s]) for s in STAGES},
                }
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VoiceFolderError(f"malformed VITS voice config.json: {exc!r}") from None

    @classmethod
    def read(cls, folder: Path) -> VitsVoiceConfig:
        path = folder / "config.json"
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise VoiceFolderError(f"no config.json in {folder}") from None
        except json.JSONDecodeError as exc:
            raise VoiceFolderError(f"{path} is not valid JSON: {exc}") from None


def load_part(folder: Path, stage: Stage) -> tuple[nn.Module, VitsVoiceConfig]:
    """The `stage` part of the voice in `folder`, weights loaded strictly, in eval mode, on
    the CPU in fp32 (move it with ``.to(device)``), and the voice's config.

    Raises:
        VoiceFolderError: no/malformed config.json, a missing weights file, or one whose
            sha256 differs from the config's (a truncated copy, a Git LFS pointer).
    """
    from safetensors.torch import load_file

    config = VitsVoiceConfig.read(folder)
    entry = config.weights(stage)
    path = folder / entry.file
    if not path.is_file():
        raise VoiceFolderError(f"{stage} weights missing: {path}")
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise VoiceFolderError(f"{path} has sha256 {actual}, config.json expects {entry.sha256}")
    part = build_part(stage, config.model)
    part.load_state_dict(load_file(str(path)), strict=True)
    return part, config
