"""``voxline voices import``: a Piper voice (``.onnx`` + ``.onnx.json``) -> a VITS voice folder.

The folder holds one fp32 safetensors file per stage (the parts of `services.vits.parts`), the
voice's MODEL_CARD when one sits beside the ``.onnx`` (licence and dataset travel with the
weights), and ``config.json`` (`services.vits.voice_folder.VitsVoiceConfig`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from services.voices import file_sha256

__all__ = ["IMPORTER", "ImportRefused", "import_piper_voice"]

IMPORTER = "voxline voices import"
_CARD_NAMES = ("MODEL_CARD", "MODEL_CARD.md", "README.md")


class ImportRefused(ValueError):
    """The files cannot be imported; the message (one line) says precisely why."""


def _model_card(onnx_path: Path) -> Path | None:
    for name in _CARD_NAMES:
        if (onnx_path.parent / name).is_file():
            return onnx_path.parent / name
    return None


def _language_code(piper_json: dict) -> str:
    """BCP 47 style: Piper's ``language.code`` ("en_US") with "-" ("en-US")."""
    language = piper_json.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    if not code:  # older voices only name their espeak voice ("en-us")
        code = (piper_json.get("espeak") or {}).get("voice", "und")
    return str(code).replace("_", "-")


def import_piper_voice(
    onnx_path: Path, config_path: Path | None, out_dir: Path, name: str | None = None
) -> Path:
    """Import the Piper voice `onnx_path` (its JSON at `config_path`, default
    ``<onnx>.json``) into ``out_dir/<name>/`` (default name: the file's stem); returns that
    folder.

    Raises:
        ImportRefused: not ONNX, not a VITS graph, missing weights, an unsupported
            ``phoneme_type``, or a missing/unreadable JSON.
    """
    import torch
    from safetensors.torch import save_file

    from services.vits.piper import PiperFormatError, read_piper
    from services.vits.voice_folder import (
        InferenceDefaults,
        PhonemeConfig,
        SourceInfo,
        VitsVoiceConfig,
        WeightsFile,
    )

    onnx_path = Path(onnx_path)
    config_path = Path(config_path) if config_path else Path(f"{onnx_path}.json")
    if not onnx_path.is_file():
        raise ImportRefused(f"{onnx_path} not found")
    try:
        voice = read_piper(onnx_path, config_path)
    except PiperFormatError as exc:
        raise ImportRefused(str(exc)) from None
    name = name or onnx_path.name.removesuffix(".onnx")
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)

    weights: dict[str, WeightsFile] = {}
    for stage, state in voice.state_dicts.items():
        file = f"{stage}.safetensors"
        save_file({k: v.to(torch.float32).contiguous() for k, v in state.items()},
                  str(folder / file))  # fmt: skip
        # safetensors writes owner-only files; a voice folder is read by other users
        # (a service account, a container), like any installed package data.
        (folder / file).chmod(0o644)
        weights[stage] = WeightsFile(file, file_sha256(folder / file))
    card = _model_card(onnx_path)
    if card is not None:
        shutil.copyfile(card, folder / card.name)

    piper = voice.piper_json
    defaults = {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}
    defaults.update(piper.get("inference") or {})
    config = VitsVoiceConfig(
        voice=name,
        language_code=_language_code(piper),
        sample_rate_hz=voice.config.sample_rate,
        hop_length=voice.config.hop_length,
        latent_channels=voice.config.inter_channels,
        phonemes=PhonemeConfig(
            type=piper.get("phoneme_type", "espeak"),
            espeak_voice=(piper.get("espeak") or {}).get("voice", "en-us"),
            id_map={k: list(v) for k, v in piper["phoneme_id_map"].items()},
        ),
        inference=InferenceDefaults(
            float(defaults["noise_scale"]),
            float(defaults["length_scale"]),
            float(defaults["noise_w"]),
        ),
        speakers={str(k): int(v) for k, v in (piper.get("speaker_id_map") or {}).items()},
        model=voice.config,
        frontend=weights["frontend"],
        acoustic=weights["acoustic"],
        vocoder=weights["vocoder"],
        source=SourceInfo(onnx_path.name, file_sha256(onnx_path), IMPORTER),
        model_card=card.name if card is not None else None,
    )
    text = json.dumps(config.to_json(), indent=1, ensure_ascii=False)
    (folder / "config.json").write_text(text + "\n", encoding="utf-8")
    return folder
