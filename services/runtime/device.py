"""Device and precision selection: CUDA when present, CPU otherwise.

The one place ``auto`` is resolved for ``--device`` (:func:`resolve_device`) and ``--dtype``
(:func:`resolve_dtype`); the vocoder's ``--vocoder auto`` builds on :func:`resolve_device`
(``services.vocoder.stage.resolve_vocoder``). Callers pass ``auto`` through unchanged.
"""

from __future__ import annotations

import torch

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda:0 when a GPU is visible, else cpu. Explicit names are validated."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device, *, half_safe: bool = True) -> torch.dtype:
    """`auto` means fp16 on CUDA (tensor cores; our conv nets are fp16-safe), fp32 on CPU.

    `half_safe=False` (a model whose outputs half precision changes, e.g. VITS): `auto` is
    fp32 on every device; fp16/bf16 may still be asked for by name.
    """
    if name == "auto":
        return torch.float16 if half_safe and device.type == "cuda" else torch.float32
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected auto, fp32, fp16 or bf16") from None


def dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'float16', 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a timer around it measures execution, not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
