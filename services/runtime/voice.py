"""Facts shared by every stage about the one voice Voxline ships.

The audio conventions are HiFi-GAN's: 22050 Hz, 80 log-mel bins, one mel frame per 256
samples. Phoneme ids follow the Piper teacher voice's map (services/frontend).
"""

from __future__ import annotations

VOICE_NAME = "voxline-en-us"
LANGUAGE_CODE = "en-US"
SAMPLE_RATE_HZ = 22050
HOP_LENGTH = 256
N_MELS = 80


def check_voice(voice: str, available: frozenset[str] | set[str] = frozenset({VOICE_NAME})) -> None:
    """Reject a voice this deployment does not serve (empty means the default voice).

    The requested name is not echoed: it is caller input, and error messages end up in
    span statuses and logs.
    """
    from services.runtime.errors import InvalidArgument

    if voice and voice not in available:
        names = ", ".join(sorted(available)) or "none"
        raise InvalidArgument(f"unknown voice; available voices: {names}")


def shipped_checkpoint(stage: str) -> str | None:
    """The trained weights committed under `models/<voice>/` for `stage`, if present.

    Looked up next to the source tree (editable installs, containers that copy `models/`).
    """
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "models" / VOICE_NAME / f"{stage}.safetensors"
    return str(path) if path.is_file() else None


def resolve_checkpoint(flag: str, stage: str) -> str | None:
    """`--checkpoint` semantics: `auto` = the shipped weights (seeded init if none are
    shipped), `none` = the seeded initialisation, anything else = a path."""
    if flag == "auto":
        return shipped_checkpoint(stage)
    if flag in ("", "none"):
        return None
    return flag
