"""Shared lifecycle of the torch model stages: device, precision, weights, description.

Every model stage (frontend, acoustic, vocoder) differs only in its model, where its weights
come from and its inference methods; device and precision selection, checkpoint-or-seeded
weights, freeing the model and the model description live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import torch

from services.runtime.checkpoint import initialise_weights
from services.runtime.device import dtype_name, resolve_device, resolve_dtype
from services.runtime.stage import ModelDescription
from services.runtime.voice import SAMPLE_RATE_HZ, VOICE_NAME
from services.voices import file_sha256

M = TypeVar("M", bound=torch.nn.Module)


class TorchModelStage(Generic[M]):
    """Loads `build_model()` onto the selected device from a checkpoint or a seeded init.

    Subclasses set `name`, `model_name`, `model_version`, `default_seed` and implement
    `build_model`, `warmup` and their inference methods; `check_precision`, `load_weights`
    and `weights_dtype` may be overridden (the vocoder refuses fp16 on a CPU, loads HiFi-GAN's
    own checkpoint format and keeps fp32 weights under CPU bf16 autocast).
    """

    name: str
    model_name: str
    model_version: str
    #: Seed of the untrained initialisation when none is given (the `--seed` flag default).
    default_seed: int

    #: Whether `auto` may pick half precision on CUDA (False: outputs change with it).
    half_safe: ClassVar[bool] = True

    def __init__(
        self,
        device: str = "auto",
        dtype: str = "auto",
        checkpoint: str | None = None,
        seed: int | None = None,
    ) -> None:
        self._device_name = device
        self._dtype_name = dtype
        self._checkpoint = checkpoint or None
        self._seed = self.default_seed if seed is None else seed
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None
        self.model: M | None = None
        self._trained = False
        self._source = ""
        self._sha256 = ""

    @property
    def device(self) -> torch.device:
        """Device the model runs on (resolved by :meth:`load`)."""
        if self._device is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not been called")
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (resolved by :meth:`load`)."""
        if self._dtype is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not been called")
        return self._dtype

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype the weights are stored in on the device (the compute dtype here)."""
        return self.dtype

    @property
    def is_loaded(self) -> bool:
        """Whether :meth:`load` has run and :meth:`finalize` has not."""
        return self.model is not None

    def build_model(self) -> M:
        """A fresh, untrained model instance."""
        raise NotImplementedError

    def check_precision(self) -> None:
        """Refuse (or warn about) a device/dtype pair the model cannot run well; called by
        :meth:`load` once both are resolved, before the model is built."""

    def load_weights(self, model: M) -> tuple[bool, str, str]:
        """Put the weights into `model`: the checkpoint if one was given, else the seeded
        initialisation. Returns (trained, source, sha256 of the weights file or "")."""
        trained, source = initialise_weights(model, self._checkpoint, self._seed)
        sha256 = file_sha256(Path(self._checkpoint)) if self._checkpoint else ""
        return trained, source, sha256

    def load(self) -> None:
        """Resolve device and dtype, build the model and load its weights. Idempotent."""
        if self.model is not None:
            return
        self._device = resolve_device(self._device_name)
        self._dtype = resolve_dtype(self._dtype_name, self._device, half_safe=self.half_safe)
        self.check_precision()
        model = self.build_model()
        self._trained, self._source, self._sha256 = self.load_weights(model)
        self.model = model.eval().to(self.device, self.weights_dtype)

    def finalize(self) -> None:
        """Free the model (and cached CUDA memory). :meth:`load` may be called again."""
        self.model = None
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def batch_key(request: object) -> None:
        """Every input may share a batch with every other (the models mask padding)."""
        return None

    def describe(self) -> ModelDescription:
        """What the runtime reports about the model (valid after :meth:`load`)."""
        return ModelDescription(
            stage=self.name,
            model_name=self.model_name,
            model_version=self.model_version,
            trained=self._trained,
            device=str(self.device),
            dtype=dtype_name(self.dtype),
            voices=(VOICE_NAME,),
            sample_rate_hz=SAMPLE_RATE_HZ,
            weights_source=self._source,
            weights_sha256=self._sha256,
        )
