"""Export a trained student as the services' checkpoints.

Writes into the model directory (``services/voices/voxline-en-us/``):

* ``frontend.safetensors`` -- `services.frontend.model.FrontendModel` state dict, fp16;
* ``acoustic.safetensors`` -- `services.acoustic.model.AcousticModel` state dict, fp16;
* ``config.json`` -- both model configs, the teacher settings, the training summary and the
  SHA-256 of each weights file.

Each safetensors file also carries its model config in the header metadata. The services load
them with `services.runtime.checkpoint` (values are cast back to the model dtype), and refuse
them if the architecture (the config defaults) does not match.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from services.acoustic.model import AcousticModel, AcousticModelConfig
from services.frontend.model import FrontendModel, FrontendModelConfig
from services.runtime.checkpoint import load_checked, read_state_dict
from services.voices import file_sha256

__all__ = ["ACOUSTIC_FILE", "CONFIG_FILE", "FRONTEND_FILE", "export"]

_LOG = logging.getLogger(__name__)

FRONTEND_FILE = "frontend.safetensors"
ACOUSTIC_FILE = "acoustic.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def _save(state: dict[str, torch.Tensor], path: Path, config: dict, name: str) -> str:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}
    metadata = {"model": name, "config": json.dumps(config, sort_keys=True)}
    save_file(tensors, str(path), metadata=metadata)
    return file_sha256(path)


def export(student_path: Path, model_dir: Path) -> None:
    """student.pt (from `training.train`) -> fp16 safetensors + config.json in `model_dir`."""
    ckpt = torch.load(student_path, map_location="cpu", weights_only=False)
    fe_cfg, ac_cfg = ckpt["frontend_config"], ckpt["acoustic_config"]
    if fe_cfg != FrontendModelConfig().to_dict() or ac_cfg != AcousticModelConfig().to_dict():
        # The services build their models from the config defaults.
        raise ValueError("trained configs differ from the services' model defaults")
    model_dir.mkdir(parents=True, exist_ok=True)
    digests = {
        FRONTEND_FILE: _save(ckpt["frontend"], model_dir / FRONTEND_FILE, fe_cfg, "frontend"),
        ACOUSTIC_FILE: _save(ckpt["acoustic"], model_dir / ACOUSTIC_FILE, ac_cfg, "acoustic"),
    }
    # Prove that the files load into the services' models exactly as the services load them.
    load_checked(FrontendModel(), read_state_dict(model_dir / FRONTEND_FILE), FRONTEND_FILE)
    load_checked(AcousticModel(), read_state_dict(model_dir / ACOUSTIC_FILE), ACOUSTIC_FILE)
    summary = ckpt["summary"]
    config_path = model_dir / CONFIG_FILE
    # Entries this export does not write (the fast vocoder's, training/vocoder.py) are kept.
    previous = json.loads(config_path.read_text()) if config_path.exists() else {}
    config = {
        **previous,
        "format_version": FORMAT_VERSION,
        "voice": "en_US-joe-medium (distilled)",
        "sample_rate_hz": 22050,
        "hop_length": 256,
        "n_mels": 80,
        "dtype": "float16",
        "frontend": {"file": FRONTEND_FILE, "sha256": digests[FRONTEND_FILE], "config": fe_cfg},
        "acoustic": {"file": ACOUSTIC_FILE, "sha256": digests[ACOUSTIC_FILE], "config": ac_cfg},
        "teacher": summary.get("teacher", {}),
        "training": {k: v for k, v in summary.items() if k not in ("history", "teacher")},
        "history": summary["history"],
    }
    config_path.write_text(json.dumps(config, indent=1) + "\n")
    size = sum((model_dir / f).stat().st_size for f in digests)
    _LOG.info("export: %s (%.1f MB of weights)", model_dir, size / 1e6)
