"""Loading model weights from a checkpoint with shape checks and clear errors."""

from __future__ import annotations

from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a torch file (`{"state_dict": ...}` or bare)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def load_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module`, failing with every missing/unexpected/mis-shaped key named.

    Values are cast to the module's parameter dtype (checkpoints may be stored in fp16).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:10])}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:10])}")
    if mismatched:
        problems.append(f"shape mismatch: {'; '.join(mismatched[:10])}")
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: " + " | ".join(problems)
        )
    module.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected}, strict=True)


def initialise_weights(
    module: torch.nn.Module, checkpoint: str | None, seed: int
) -> tuple[bool, str]:
    """Load `checkpoint` if given, else apply the module's seeded `reset_parameters(seed)`.

    Returns (trained, source) for ModelInfo/logs: trained is True only for a checkpoint.
    """
    if checkpoint:
        load_checked(module, read_state_dict(checkpoint), checkpoint)
        return True, str(checkpoint)
    module.reset_parameters(seed)  # type: ignore[operator]
    return False, f"seeded-init:{seed}"
