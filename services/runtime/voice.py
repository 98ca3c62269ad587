"""Facts shared by every stage about the one voice Voxline ships.

The audio conventions are HiFi-GAN's: 22050 Hz, 80 log-mel bins, one mel frame per 256
samples. Phoneme ids follow the Piper teacher voice's map (services/frontend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.voices.catalog import ALL_VOICES, STUDENT_VOICE

if TYPE_CHECKING:
    from services.runtime.config import ServiceConfig

#: The student voice's name (services/voices/catalog.py states the catalogue's names).
VOICE_NAME = STUDENT_VOICE
LANGUAGE_CODE = "en-US"
SAMPLE_RATE_HZ = 22050
HOP_LENGTH = 256
N_MELS = 80
#: Longest mel one request may have (acoustic output, vocoder input): ~3 minutes of audio.
MAX_MEL_FRAMES = 16_000
#: Mel frames per streaming window: the acoustic stage's chunks and the vocoder's windows
#: (48 frames ~ 0.56 s), so each pushed chunk is vocoded as one constant-shape window.
STREAM_WINDOW_FRAMES = 48
#: New frames of a stream's first vocoder window (it doubles up to STREAM_WINDOW_FRAMES): a
#: small first pass is what makes the first audio fast.
FIRST_WINDOW_FRAMES = 16
#: Longest text one request may carry (characters).
MAX_TEXT_CHARS = 5000
#: How many times the text limit a request's text may grow to when numbers and symbols are
#: spelled out ("%" -> "percent"): a bound on G2P work, which a raw-character limit is not.
MAX_EXPANSION = 4
#: Most sentences one request may have (each costs stage calls of its own).
MAX_SENTENCES = 1000
#: Longest audio one request may ask for (seconds; slow speaking rates stretch it).
MAX_AUDIO_SECONDS = 30 * 60


def check_voice(voice: str, available: frozenset[str] | set[str] = frozenset({VOICE_NAME})) -> None:
    """Reject a voice this deployment does not serve (empty means the default voice).

    The requested name is not echoed: it is caller input, and error messages end up in
    span statuses and logs.
    """
    from services.runtime.errors import InvalidArgument

    if voice and voice not in available:
        names = ", ".join(sorted(available)) or "none"
        raise InvalidArgument(f"unknown voice; available voices: {names}")


def resolve_checkpoint(flag: str, stage: str) -> str | None:
    """`--checkpoint` semantics: `auto` = the shipped voice's weights for `stage` (verified
    against its config.json), `none` = the seeded, untrained initialisation (only when asked
    for), anything else = a path.

    Exits the process with a one-line error when the shipped voice cannot be found: a stage
    must never fall back to untrained weights on its own.
    """
    from services.voices import VoiceNotFound, stage_weights

    if flag == "auto":
        try:
            return str(stage_weights(VOICE_NAME, stage).path)
        except VoiceNotFound as exc:
            raise SystemExit(f"error: {stage}: {exc}") from None
    if flag in ("", "none"):
        return None
    return flag


@dataclass(frozen=True)
class WeightsOptions:
    """A model stage's weights (flags `--checkpoint`, see `resolve_checkpoint`, and `--seed`;
    services/runtime/config.py generates them); each stage's options give `seed` its stage's
    default (e.g. `AcousticStage.default_seed`)."""

    checkpoint: str = field(
        default="auto",
        metadata={
            "help": f"{VOICE_NAME} weights: auto (the shipped voice; VOXLINE_MODEL_DIR "
            "overrides its folder) | none (seeded, untrained) | PATH"
        },
    )
    seed: int = field(kw_only=True, metadata={"help": "seed of the untrained initialisation"})


@dataclass(frozen=True)
class VoiceOptions:
    """The voices a model stage serves (flags `--voices`, `--default-voice`;
    services/voices/catalog.py)."""

    voices: str = field(
        default=ALL_VOICES,
        metadata={
            "help": "voices to serve: all (every folder in the voices directory) | NAME[,NAME...]"
        },
    )
    default_voice: str = field(
        default="",
        metadata={
            "help": "the voice an empty voice name selects (empty: en_US-joe-medium if served, "
            "else the first voice)"
        },
    )


def served_voices(service: str, options: VoiceOptions) -> tuple[list[Any], str]:
    """The catalogue entries `--voices` selects and the default voice among them. Exits the
    process with a one-line error when a voice is missing (a stage must not start without
    the voices it was asked for)."""
    from services.voices import VoiceNotFound
    from services.voices.catalog import default_voice, select

    try:
        entries = select(options.voices)
        return entries, default_voice(entries, options.default_voice)
    except VoiceNotFound as exc:
        raise SystemExit(f"error: {service}: {exc}") from None


def stage_options(config: ServiceConfig, weights: WeightsOptions) -> dict[str, Any]:
    """A model stage's constructor options from its flags: device, dtype, weights, seed."""
    return {
        "device": config.device,
        "dtype": config.dtype,
        "checkpoint": resolve_checkpoint(weights.checkpoint, config.service),
        "seed": weights.seed,
    }
