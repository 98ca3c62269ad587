"""What the three VITS stages share: loading their part of a voice folder, and seeds.

Each stage (frontend, acoustic, vocoder) holds one part of a converted Piper voice
(`services/vits/parts.py`) and subclasses :class:`VitsStage`; the runtime around it is the
same as for every model stage (`services/runtime/model_stage.py`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import torch

from services.runtime.device import dtype_name, resolve_device, resolve_dtype
from services.runtime.model_stage import TorchModelStage
from services.runtime.stage import ModelDescription
from services.runtime.voices import check_speaker
from services.vits.voice_folder import VitsVoiceConfig, load_part

M = TypeVar("M", bound=torch.nn.Module)

#: The model family name in descriptions, ListVoices and voice folders.
ARCHITECTURE = "vits"


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed for one use of a request's seed (a sentence, a noise draw): the same
    inputs always give the same seed, different ones unrelated seeds."""
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def gaussian(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal noise [shape] on CPU from its own seeded generator (so a request's
    noise never depends on what else shares its batch)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class VitsStage(TorchModelStage[M], Generic[M]):
    """One stage's part of a VITS voice folder (written by ``voxline voices import``).

    Precision: ``auto`` is fp32 on every device. The flow exponentiates log-scales and the
    durations are ceilings of exponentials, so half precision changes durations and
    breaks parity with the original voice; fp16/bf16 may still be asked for.
    """

    #: The voice folder's part this stage loads ("frontend", "acoustic", "vocoder").
    part: ClassVar[str]
    default_seed = 0  # unused: VITS voices always load trained weights
    half_safe = False  # `auto` is fp32 on every device (the docstring above says why)

    def __init__(self, folder: Path, device: str = "auto", dtype: str = "auto") -> None:
        super().__init__(device, dtype)
        self.folder = Path(folder)
        self.voice: VitsVoiceConfig | None = None

    @property
    def config(self) -> VitsVoiceConfig:
        """The voice folder's config (read by :meth:`load`)."""
        if self.voice is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not been called")
        return self.voice

    @property
    def model_name(self) -> str:  # type: ignore[override]
        return f"vits-{self.part}"

    @property
    def model_version(self) -> str:  # type: ignore[override]
        return f"{self.folder.name}-{self._sha256[:12]}"

    def build_model(self) -> M:  # pragma: no cover - load() builds from the folder
        raise NotImplementedError("VITS parts are built by load_part()")

    def load(self) -> None:
        """Read the folder's config and this part's weights (sha256-checked) onto the device."""
        if self.model is not None:
            return
        self._device = resolve_device(self._device_name)
        self._dtype = resolve_dtype(self._dtype_name, self._device)
        model, self.voice = load_part(self.folder, self.part)  # type: ignore[arg-type]
        entry = self.voice.weights(self.part)  # type: ignore[arg-type]
        self._trained, self._source, self._sha256 = (
            True,
            str(self.folder / entry.file),
            entry.sha256,
        )
        self.model = model.eval().to(self.device, self.weights_dtype)

    def check_speaker(self, speaker_id: int) -> int:
        """`speaker_id` if the voice has it (0 for a single-speaker voice)."""
        return check_speaker(speaker_id, len(self.config.speakers))

    def speaker_ids(self, ids: list[int]) -> torch.Tensor | None:
        """Rows' speaker ids for the model (None for a single-speaker voice)."""
        if not self.config.speakers:
            return None
        return torch.tensor(ids, dtype=torch.int64, device=self.device)

    def describe(self) -> ModelDescription:
        voice = self.config
        return ModelDescription(
            stage=self.name,
            model_name=self.model_name,
            model_version=self.model_version,
            trained=True,
            device=str(self.device),
            dtype=dtype_name(self.dtype),
            voices=(self.folder.name,),
            sample_rate_hz=voice.sample_rate_hz,
            weights_source=self._source,
            weights_sha256=self._sha256,
            architecture=ARCHITECTURE,
            hop_length=voice.hop_length,
            feature_channels=voice.latent_channels,
            language_code=voice.language_code,
            speakers=tuple(sorted(voice.speakers, key=voice.speakers.__getitem__)),
        )
