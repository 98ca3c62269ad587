"""The vocoder stage of a VITS voice: frame-rate latent -> waveform (the VITS decoder).

The decoder (:class:`services.vits.parts.VitsDecoderModel`, HiFi-GAN-shaped: transposed-conv
upsampling to the voice's hop, residual blocks, tanh) is a non-causal CNN without state, so
it streams with the same windows as the student's vocoders (:class:`StreamingVocoder`), with
the context its receptive field needs (:func:`services.vits.decoder.context_frames`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from services.runtime.conv_layout import to_channels_last
from services.runtime.device import synchronize
from services.runtime.voice import FIRST_WINDOW_FRAMES
from services.vits.decoder import context_frames
from services.vits.parts import VitsDecoderModel
from services.vits.stage import VitsStage
from services.vocoder.stage import StreamingVocoder, to_pcm16

# Frames streamed by the warm-up: about 2.3 s of audio at 22050 Hz, a typical sentence.
_WARMUP_FRAMES = 200
#: New frames per steady-state streaming window (~1.1 s of audio at 22050 Hz / hop 256).
VITS_WINDOW_FRAMES = 96


@dataclass(frozen=True)
class LatentWindow:
    """One decoder pass: latent [C, n] and the speaker it is spoken by."""

    latent: torch.Tensor
    speaker_id: int


class VitsVocoderStage(VitsStage[VitsDecoderModel]):
    """The VITS decoder of one voice folder, in streaming windows.

    Args:
        folder: The voice folder.
        chunk_frames: Most new frames one streaming window decodes.
        first_chunk_frames: New frames of a stream's first window (doubling up to
            ``chunk_frames``).
    """

    name = "vocoder"
    part = "vocoder"
    #: The decoder's cost per frame halves from 48-frame to 96-frame windows (measured, 2
    #: threads: 1.26 vs 0.68 ms per new frame with 12 frames of context each side), so a
    #: stream after its first window waits for whole windows of `chunk_frames`.
    full_windows = True

    def __init__(
        self,
        folder: Path,
        device: str = "auto",
        dtype: str = "auto",
        chunk_frames: int = VITS_WINDOW_FRAMES,
        first_chunk_frames: int = FIRST_WINDOW_FRAMES,
    ) -> None:
        super().__init__(folder, device, dtype)
        self.chunk_frames = chunk_frames
        self.first_chunk_frames = first_chunk_frames

    def load(self) -> None:
        super().load()
        if self.device.type == "cpu":  # oneDNN's NHWC kernels: ~2x (runtime/conv_layout.py)
            to_channels_last(self.model)

    @property
    def context_frames(self) -> int:
        """Latent frames of context a window needs on each side to match one pass."""
        return context_frames(self.config.model)

    @property
    def channels(self) -> int:
        return self.config.latent_channels

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate_hz

    def warmup(self) -> None:
        """Every window shape a stream uses, twice."""
        silence = torch.zeros(self.channels, _WARMUP_FRAMES)
        for _ in range(2):
            stream = self.stream()
            stream.push(silence)
            stream.flush()

    def stream(self, speaker_id: int = 0) -> StreamingVocoder:
        """A streaming session for one utterance of `speaker_id`."""
        return StreamingVocoder(self, speaker_id=self.check_speaker(speaker_id))

    @staticmethod
    def window_input(latent: torch.Tensor, speaker_id: int = 0) -> LatentWindow:
        return LatentWindow(latent, speaker_id)

    @torch.inference_mode()
    def execute(self, windows: list[LatentWindow]) -> list[torch.Tensor]:
        """Decode windows; float32 waveforms [n_i * hop] on CPU, in order. Equal lengths run
        as one batch (no padding: each row is exactly what it would be alone)."""
        assert self.model is not None
        out: list[torch.Tensor | None] = [None] * len(windows)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(int(w.latent.shape[1]), []).append(i)
        for indices in by_length.values():
            z = torch.stack([windows[i].latent for i in indices])
            sid = self.speaker_ids([windows[i].speaker_id for i in indices])
            audio = self.model(z.to(self.device, self.dtype), sid)
            synchronize(self.device)
            audio = audio.reshape(len(indices), -1).float().cpu()
            for row, i in enumerate(indices):
                out[i] = audio[row]
        return out  # type: ignore[return-value]

    def infer(self, latent: torch.Tensor, speaker_id: int = 0) -> torch.Tensor:
        """Decode a whole utterance in one pass: latent [C, frames] -> int16 PCM."""
        return to_pcm16(self.execute([LatentWindow(latent.float(), speaker_id)])[0])

    @staticmethod
    def batch_key(window: LatentWindow) -> int:
        """Windows batch with windows of the same length."""
        return int(window.latent.shape[1])

    @staticmethod
    def batch_length(window: LatentWindow) -> int:
        return int(window.latent.shape[1])
