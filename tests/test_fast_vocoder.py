"""The fast frame-rate vocoder: its inverse STFT, the shipped weights, quality, streaming.

The quality bounds are what the committed weights measured (docs/models.md, "Fast vocoder")
with margin; the end-to-end WER comparison with HiFi-GAN through the real stack is in
tests/test_voice_quality.py. In process, CPU, about 30 s on 2 cores.
"""

from __future__ import annotations

import json

import pytest
import torch

from services.acoustic.stage import AcousticStage
from services.frontend.stage import FrontendStage
from services.runtime.voice import HOP_LENGTH, resolve_checkpoint
from services.vocoder.fast import RECEPTIVE_FIELD_FRAMES, FastVocoder, InverseSTFT
from services.vocoder.mel import MelConfig
from services.vocoder.stage import VOCODERS, VocoderStage
from services.voices import model_dir
from training.spectral import log_mel, log_mel_l1, mel_cepstral_distortion

torch.set_num_threads(2)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "It costs $3.50 at the corner shop, said Dr. Smith on March 3rd.",
]
# Fast vs HiFi-GAN on the same acoustic-model mels. Measured with the committed weights on
# TEXTS: log-mel L1 0.295-0.301, MCD 13.2-14.0 dB (on the 16 held-out sentences 0.295 and
# 13.4 dB, docs/models.md); an untrained model of the same architecture: 2.13-2.15, 89-93 dB.
MAX_LOG_MEL_L1_VS_HIFIGAN = 0.40
MAX_MCD_DB_VS_HIFIGAN = 16.0
# The rendering's log-mel against the mel it was given: measured 0.21 (HiFi-GAN's: 0.22).
MAX_LOG_MEL_L1_VS_INPUT = 0.30
# Stream vs one pass with the default context (24 frames) and 1-frame pushes: measured
# >= 75.5 dB on three sentences (20 frames: 48 dB, 16 frames: 37 dB).
MIN_STREAM_SNR_DB = 60.0


def _snr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    ref, out = reference.double(), test.double()
    return (10 * torch.log10(ref.square().sum() / (out - ref).square().sum())).item()


@pytest.fixture(scope="module")
def fast() -> VocoderStage:
    stage = VocoderStage(
        vocoder="fast", device="cpu", checkpoint=resolve_checkpoint("auto", "vocoder")
    )
    stage.load()
    stage.warmup()
    return stage


@pytest.fixture(scope="module")
def hifigan() -> VocoderStage:
    stage = VocoderStage(vocoder="hifigan", device="cpu")
    stage.load()
    return stage


@pytest.fixture(scope="module")
def mels() -> list[torch.Tensor]:
    """The shipped acoustic model's mels for TEXTS (what the vocoder is served)."""
    frontend = FrontendStage(device="cpu", checkpoint=resolve_checkpoint("auto", "frontend"))
    acoustic = AcousticStage(device="cpu", checkpoint=resolve_checkpoint("auto", "acoustic"))
    frontend.load()
    acoustic.load()
    out = []
    for text in TEXTS:
        for sentence in frontend.encode(frontend.prepare(text), 1.0):
            out.append(acoustic.generate(sentence.features, sentence.durations))
    return out


def test_inverse_stft_inverts_the_mel_framing() -> None:
    # Analyse with exactly the HiFi-GAN feature framing (reflect pad (n_fft - hop) / 2, no
    # centring); the "same" inverse STFT must give the signal back sample for sample. Half a
    # hop of misalignment (torch.istft(center=True)) would leave an error of order 1.
    cfg = MelConfig()
    signal = torch.randn(1, 60 * HOP_LENGTH, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(signal[:, None], (cfg.pad, cfg.pad), mode="reflect")[:, 0]
    window = torch.hann_window(cfg.n_fft)
    spectrum = torch.stft(padded, cfg.n_fft, cfg.hop_length, window=window, center=False,
                          return_complex=True)  # fmt: skip
    assert spectrum.shape[-1] == 60
    restored = InverseSTFT(cfg.n_fft, cfg.hop_length)(spectrum)
    assert restored.shape == signal.shape
    assert (restored - signal).abs().max().item() < 1e-4


def test_shipped_weights_are_the_voices_and_compact(fast: VocoderStage) -> None:
    config = json.loads((model_dir() / "voxline-en-us" / "config.json").read_text())["vocoder"]
    description = fast.describe()
    assert description.trained
    assert description.model_name == VOCODERS["fast"].model_name
    assert description.weights_sha256 == config["sha256"]
    weights = model_dir() / "voxline-en-us" / config["file"]
    assert weights.suffix == ".safetensors"
    assert weights.stat().st_size < 16e6  # fp16: 7.7 M parameters
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(weights)).values()} == {torch.float16}


def test_sounds_like_hifigan_and_untrained_does_not(
    fast: VocoderStage, hifigan: VocoderStage, mels: list[torch.Tensor]
) -> None:
    untrained = FastVocoder()
    untrained.reset_parameters(0)
    for mel in mels:
        reference = hifigan.infer(mel)
        rendered = fast.infer(mel)
        assert rendered.shape == reference.shape == (mel.shape[1] * HOP_LENGTH,)
        l1, mcd = log_mel_l1(reference, rendered), mel_cepstral_distortion(reference, rendered)
        assert l1 <= MAX_LOG_MEL_L1_VS_HIFIGAN and mcd <= MAX_MCD_DB_VS_HIFIGAN, (l1, mcd)
        # The rendering's own log-mel follows the mel it was given.
        assert (log_mel(rendered) - mel).abs().mean().item() <= MAX_LOG_MEL_L1_VS_INPUT
        # The same check on an untrained model of the same architecture must fail, or it
        # would prove nothing about training.
        with torch.inference_mode():
            noise = untrained.eval()(mel[None])[0].clamp(-1, 1)
        assert log_mel_l1(reference, noise) > 2 * MAX_LOG_MEL_L1_VS_HIFIGAN


def _stream(stage: VocoderStage, mel: torch.Tensor, sizes: list[int], **overrides: int):
    stream = stage.stream(**overrides)
    pieces, start = [], 0
    for size in [*sizes, mel.shape[1]]:
        pieces.append(stream.push(mel[:, start : start + size]))
        start += size
    pieces.append(stream.flush())
    return torch.cat(pieces)


def test_streaming_matches_one_pass(fast: VocoderStage, mels: list[torch.Tensor]) -> None:
    mel = max(mels, key=lambda m: m.shape[1])
    unary = fast.infer(mel)
    assert fast.context_frames == VOCODERS["fast"].context_frames
    # 1-frame pushes put a window seam at every frame: the hardest case for the context.
    audio = _stream(fast, mel, [1] * 20 + [7, 48, 100])
    assert audio.shape == unary.shape
    assert _snr_db(unary, audio) >= MIN_STREAM_SNR_DB
    # Less context, less exact: the default is not more than needed by accident.
    snrs = [_snr_db(unary, _stream(fast, mel, [5, 30, 3], context_frames=c)) for c in (12, 20)]
    assert snrs[0] < snrs[1] < _snr_db(unary, _stream(fast, mel, [5, 30, 3]))
    # Beyond the receptive field a window sees exactly what the one pass sees.
    exact = _stream(fast, mel, [5, 30, 3], context_frames=RECEPTIVE_FIELD_FRAMES + 2)
    assert (exact.int() - unary.int()).abs().max().item() <= 2


def test_untrained_stage_says_so() -> None:
    stage = VocoderStage(vocoder="fast", device="cpu")  # no checkpoint: seeded init
    stage.load()
    assert not stage.describe().trained
    assert stage.describe().weights_source.startswith("seeded-init")
    with pytest.raises(ValueError, match="unknown vocoder"):
        VocoderStage(vocoder="waveglow")
