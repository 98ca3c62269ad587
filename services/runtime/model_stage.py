"""Shared lifecycle of the torch model stages whose weights Voxline trains itself.

Frontend and acoustic stages differ only in their model and their inference methods; device
and precision selection, checkpoint-or-seeded weights and the model description live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Generic, TypeVar

import torch

from services.runtime.checkpoint import initialise_weights
from services.runtime.device import dtype_name, resolve_device, resolve_dtype
from services.runtime.stage import ModelDescription
from services.runtime.voice import SAMPLE_RATE_HZ, VOICE_NAME
from services.voices import file_sha256

M = TypeVar("M", bound=torch.nn.Module)


class TorchModelStage(Generic[M]):
    """Loads `build_model()` onto the selected device from a checkpoint or a seeded init.

    Subclasses set `name`, `model_name`, `model_version` and implement `build_model`,
    `warmup` and their inference methods.
    """

    name: str
    model_name: str
    model_version: str

    def __init__(
        self,
        device: str = "auto",
        dtype: str = "auto",
        checkpoint: str | None = None,
        seed: int = 1234,
    ) -> None:
        self._device_name = device
        self._dtype_name = dtype
        self._checkpoint = checkpoint or None
        self._seed = seed
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.model: M | None = None
        self._trained = False
        self._source = ""
        self._sha256 = ""

    def build_model(self) -> M:
        """A fresh, untrained model instance."""
        raise NotImplementedError

    def load(self) -> None:
        self.device = resolve_device(self._device_name)
        self.dtype = resolve_dtype(self._dtype_name, self.device)
        model = self.build_model()
        self._trained, self._source = initialise_weights(model, self._checkpoint, self._seed)
        self._sha256 = file_sha256(Path(self._checkpoint)) if self._checkpoint else ""
        self.model = model.eval().to(self.device, self.dtype)

    def finalize(self) -> None:
        self.model = None

    @staticmethod
    def batch_key(request: object) -> None:
        """Every input may share a batch with every other (the models mask padding)."""
        return None

    def describe(self) -> ModelDescription:
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
