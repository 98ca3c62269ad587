"""The one stand-in for nvidia-ml-py (`pynvml`) the tests use where no GPU is: one device
whose readings come from the environment (defaults below), so the same module serves
in-process tests (loaded with `load()`, readings via monkeypatched env) and child processes
(this folder on their PYTHONPATH).

FAKE_NVML_UUID, FAKE_NVML_NAME, FAKE_NVML_GPU_UTIL (percent), FAKE_NVML_MEMORY_USED /
FAKE_NVML_MEMORY_TOTAL (bytes), FAKE_NVML_TEMPERATURE (C), FAKE_NVML_POWER_MW, and
FAKE_NVML_POWER_FAILS_FIRST=1 (the first power reading raises NVMLError: per-call error
handling).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

NVML_TEMPERATURE_GPU = 0
_calls = {"power": 0}


class NVMLError(Exception):
    pass


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FAKE_NVML_{name}", default)


def nvmlInit() -> None:
    _calls["power"] = 0


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return 1


def nvmlDeviceGetHandleByIndex(index: int) -> str:
    return f"h{index}"


def nvmlDeviceGetUUID(handle: Any) -> str:
    return _env("UUID", "GPU-1234-abcd")


def nvmlDeviceGetName(handle: Any) -> bytes:
    return _env("NAME", "NVIDIA H100 80GB HBM3").encode()  # old pynvml returns bytes


def nvmlDeviceGetUtilizationRates(handle: Any) -> SimpleNamespace:
    return SimpleNamespace(gpu=int(_env("GPU_UTIL", "37")), memory=10)


def nvmlDeviceGetMemoryInfo(handle: Any) -> SimpleNamespace:
    used, total = (
        int(_env("MEMORY_USED", str(2 * 1024**3))),
        int(_env("MEMORY_TOTAL", str(80 * 1024**3))),
    )
    return SimpleNamespace(used=used, free=total - used, total=total)


def nvmlDeviceGetTemperature(handle: Any, sensor: int) -> int:
    return int(_env("TEMPERATURE", "61"))


def nvmlDeviceGetPowerUsage(handle: Any) -> int:
    _calls["power"] += 1
    if _calls["power"] == 1 and _env("POWER_FAILS_FIRST", "0") == "1":
        raise NVMLError("Not Supported")
    return int(_env("POWER_MW", "123500"))


def load() -> Any:
    """This module as a fresh `pynvml` (for `sys.modules["pynvml"]` in-process)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("pynvml", Path(__file__))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
