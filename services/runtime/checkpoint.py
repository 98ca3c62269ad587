"""Loading model weights from a checkpoint with shape checks and clear errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def checkpoint_problems(
    expected: Mapping[str, Sequence[int]], given: Mapping[str, torch.Tensor]
) -> list[str]:
    """What keeps `given` weights from loading into a model whose parameters have the
    `expected` shapes: missing, unexpected and mis-shaped keys, each named (empty: fits)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k!r}: checkpoint {list(given[k].shape)} vs model {list(shape)}"
        for k, shape in sorted(expected.items())
        if k in given and tuple(given[k].shape) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_describe([repr(k) for k in missing])}")
    if unexpected:
        problems.append(f"unexpected keys {_describe([repr(k) for k in unexpected])}")
    if mismatched:
        problems.append(f"shape mismatch {_describe(mismatched)}")
    return problems


def _describe(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def load_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module`, failing with every missing/unexpected/mis-shaped key named.

    Values are cast to the module's parameter dtype (checkpoints may be stored in fp16).
    """
    expected = module.state_dict()
    problems = checkpoint_problems({k: v.shape for k, v in expected.items()}, state)
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
