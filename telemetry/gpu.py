"""GPU metrics from NVML (``pynvml`` from nvidia-ml-py) as observable instruments.

Per device, attributes ``hw.id`` (GPU UUID), ``hw.vendor`` (NVIDIA), ``hw.model`` (product name),
``hw.type`` (gpu):

- ``hw.gpu.utilization`` (gauge, ratio 0..1)
- ``hw.gpu.memory.usage`` / ``hw.gpu.memory.limit`` (up-down counters, By)
- ``hw.temperature`` (gauge, Cel), ``hw.power`` (gauge, W)

and for this process's PyTorch CUDA caching allocator, per CUDA device this process
initialised: ``voxline.gpu.torch.memory.allocated`` / ``.reserved`` (By).

Callbacks run on the metric reader's thread at each collection, never on a request path.
Without NVML (no driver, no GPU: the normal case on CPU machines) nothing is registered and
one INFO line per process says so. ``nvmlInit`` runs once per process; a failing NVML query
skips that one observation (logged once per device and query at WARNING, then DEBUG).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from telemetry import names

_logger = logging.getLogger(__name__)

_lock = threading.Lock()
#: None = not tried yet; else whether nvmlInit succeeded (shared by the whole process).
_nvml_ok: bool | None = None
_nvml: Any = None
_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class GpuDevice:
    """One NVML device: its handle and the attributes put on its observations."""

    index: int
    handle: Any
    attributes: dict[str, str]


def _init_nvml() -> Any | None:
    """Import pynvml and run nvmlInit once per process; the module or None."""
    global _nvml_ok, _nvml
    with _lock:
        if _nvml_ok is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml, _nvml_ok = pynvml, True
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded
                _nvml_ok = False
                _logger.info("NVML not available (%s): GPU metrics disabled", exc)
        return _nvml if _nvml_ok else None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _visible_filter() -> Callable[[int, str], bool]:
    """Honour CUDA_VISIBLE_DEVICES (indices or UUIDs) — NVML itself ignores it."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None or not raw.strip():
        return lambda _i, _u: True
    wanted = [w.strip() for w in raw.split(",") if w.strip()]

    def keep(index: int, uuid: str) -> bool:
        for w in wanted:
            if w.isdigit() and int(w) == index:
                return True
            if not w.isdigit() and uuid.startswith(w):
                return True
        return False

    return keep


def list_devices(nvml: Any) -> list[GpuDevice]:
    """Enumerate the visible NVML devices."""
    devices: list[GpuDevice] = []
    keep = _visible_filter()
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            model = _text(nvml.nvmlDeviceGetName(handle))
        except Exception as exc:
            _logger.warning("NVML device %d skipped: %s", index, exc)
            continue
        if not keep(index, uuid):
            continue
        devices.append(
            GpuDevice(
                index=index,
                handle=handle,
                attributes={
                    names.ATTR_HW_ID: uuid or f"gpu{index}",
                    names.ATTR_HW_VENDOR: names.HW_VENDOR_NVIDIA,
                    names.ATTR_HW_MODEL: model,
                    names.ATTR_HW_TYPE: names.HW_TYPE_GPU,
                },
            )
        )
    return devices


def _query_failed(metric: str, device: GpuDevice, exc: BaseException) -> None:
    key = (metric, device.attributes[names.ATTR_HW_ID])
    if key not in _warned:
        _warned.add(key)
        _logger.warning("NVML query for %s on %s failed: %s", metric, key[1], exc)
    else:
        _logger.debug("NVML query for %s on %s failed: %s", metric, key[1], exc)


def _observer(
    metric: str, devices: list[GpuDevice], read: Callable[[Any], float]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        out: list[Observation] = []
        for device in devices:
            try:
                out.append(Observation(read(device.handle), device.attributes))
            except Exception as exc:  # NVMLError (GPU lost, not supported, ...) per call
                _query_failed(metric, device, exc)
        return out

    return callback


def _torch_observer(
    kind: str, devices: list[GpuDevice]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    by_uuid = {d.attributes[names.ATTR_HW_ID]: d.attributes for d in devices}

    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        torch = sys.modules.get("torch")
        # Only report what this process already uses: never import torch or initialise CUDA
        # from the metrics thread (that would allocate a CUDA context in every service).
        if torch is None:
            return []
        try:
            if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
                return []
            out: list[Observation] = []
            for i in range(torch.cuda.device_count()):
                fn = (
                    torch.cuda.memory_allocated
                    if kind == "allocated"
                    else torch.cuda.memory_reserved
                )
                attrs = _torch_device_attributes(torch, i, by_uuid)
                out.append(Observation(int(fn(i)), attrs))
            return out
        except Exception as exc:
            _logger.debug("torch CUDA memory query failed: %s", exc)
            return []

    return callback


def _torch_device_attributes(
    torch: Any, index: int, by_uuid: dict[str, dict[str, str]]
) -> dict[str, str]:
    try:
        uuid = "GPU-" + str(torch.cuda.get_device_properties(index).uuid)
        if uuid in by_uuid:
            return {**by_uuid[uuid], names.ATTR_DEVICE: f"cuda:{index}"}
    except Exception:
        pass
    return {names.ATTR_HW_ID: f"cuda:{index}", names.ATTR_DEVICE: f"cuda:{index}"}


def register_gpu_metrics(meter: metrics.Meter) -> bool:
    """Register NVML GPU instruments (and torch allocator ones) on ``meter``.

    Returns False, registering nothing, when NVML is unavailable or sees no GPU.
    """
    nvml = _init_nvml()
    if nvml is None:
        return False
    try:
        devices = list_devices(nvml)
    except Exception as exc:
        _logger.info("NVML device enumeration failed (%s): GPU metrics disabled", exc)
        return False
    if not devices:
        _logger.info("NVML found no visible GPU: GPU metrics disabled")
        return False

    temperature_sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
    meter.create_observable_gauge(
        names.METRIC_HW_GPU_UTILIZATION,
        callbacks=[
            _observer(
                names.METRIC_HW_GPU_UTILIZATION,
                devices,
                lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0,
            )
        ],
        unit=names.UNIT_RATIO,
        description="Fraction of time one or more kernels ran on the GPU (NVML).",
    )
    meter.create_observable_up_down_counter(
        names.METRIC_HW_GPU_MEMORY_USAGE,
        callbacks=[
            _observer(
                names.METRIC_HW_GPU_MEMORY_USAGE,
                devices,
                lambda h: int(nvml.nvmlDeviceGetMemoryInfo(h).used),
            )
        ],
        unit=names.UNIT_BYTES,
        description="GPU memory in use, all processes (NVML).",
    )
    meter.create_observable_up_down_counter(
        names.METRIC_HW_GPU_MEMORY_LIMIT,
        callbacks=[
            _observer(
                names.METRIC_HW_GPU_MEMORY_LIMIT,
                devices,
                lambda h: int(nvml.nvmlDeviceGetMemoryInfo(h).total),
            )
        ],
        unit=names.UNIT_BYTES,
        description="Total GPU memory (NVML).",
    )
    meter.create_observable_gauge(
        names.METRIC_HW_TEMPERATURE,
        callbacks=[
            _observer(
                names.METRIC_HW_TEMPERATURE,
                devices,
                lambda h: float(nvml.nvmlDeviceGetTemperature(h, temperature_sensor)),
            )
        ],
        unit=names.UNIT_CELSIUS,
        description="GPU die temperature (NVML).",
    )
    meter.create_observable_gauge(
        names.METRIC_HW_POWER,
        callbacks=[
            _observer(
                names.METRIC_HW_POWER,
                devices,
                lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,  # NVML reports mW
            )
        ],
        unit=names.UNIT_WATTS,
        description="GPU power draw (NVML).",
    )
    meter.create_observable_up_down_counter(
        names.METRIC_GPU_TORCH_MEMORY_ALLOCATED,
        callbacks=[_torch_observer("allocated", devices)],
        unit=names.UNIT_BYTES,
        description="GPU memory held by tensors of this process (torch caching allocator).",
    )
    meter.create_observable_up_down_counter(
        names.METRIC_GPU_TORCH_MEMORY_RESERVED,
        callbacks=[_torch_observer("reserved", devices)],
        unit=names.UNIT_BYTES,
        description="GPU memory reserved by this process's torch caching allocator.",
    )
    _logger.info(
        "GPU metrics enabled for %s",
        ", ".join(f"{d.attributes[names.ATTR_HW_MODEL]} ({d.index})" for d in devices),
    )
    return True


def _reset_for_tests() -> None:
    """Forget the NVML state (tests that fake ``pynvml`` only)."""
    global _nvml_ok, _nvml
    with _lock:
        _nvml_ok, _nvml = None, None
        _warned.clear()
