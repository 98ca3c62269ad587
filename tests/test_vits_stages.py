"""The VITS voice's three stages as the services run them: batched == alone across requests
(ragged lengths, each request's own seed and rate), and seeds that reproduce."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from services.acoustic.vits_stage import VitsAcousticStage
from services.frontend.vits_stage import VitsFrontendStage
from services.vocoder.vits_stage import VitsVocoderStage
from services.voices import model_dir
from services.voices.catalog import JOE_VOICE

FOLDER = model_dir() / JOE_VOICE
TEXTS = ["Hello there.", "Is it raining in Paris, or is it just cloudy today?", "No!"]
RATES = [1.0, 1.4, 0.8]
SEEDS = [11, 22, 33]
# fp32 convolutions round differently with the input length (oneDNN blocks by length): rows
# of a padded batch agree with the row alone to ~1e-4 relative after the flow, whose latent
# values reach ~3 (in float64 to 1e-9: tests/test_vits_parity.py, which checks the masking).
ATOL, RTOL = 1e-4, 1e-3


@pytest.fixture(scope="module")
def stages() -> Iterator[tuple[VitsFrontendStage, VitsAcousticStage, VitsVocoderStage]]:
    assert FOLDER.is_dir(), f"{FOLDER} missing: run `make voices`"
    built = VitsFrontendStage(FOLDER), VitsAcousticStage(FOLDER), VitsVocoderStage(FOLDER)
    for stage in built:
        stage.load()
    yield built


def _requests(frontend: VitsFrontendStage) -> list:
    return [
        frontend.make_input(list(frontend.prepare_iter(text)), rate, 0, seed)
        for text, rate, seed in zip(TEXTS, RATES, SEEDS, strict=True)
    ]


def test_frontend_batched_equals_alone(stages) -> None:
    frontend, _, _ = stages
    requests = _requests(frontend)
    batched = frontend.execute(requests)
    for request, together in zip(requests, batched, strict=True):
        (alone,) = frontend.execute([request])
        for a, b in zip(alone, together, strict=True):
            assert torch.equal(a.durations, b.durations) and a.seed == b.seed
            torch.testing.assert_close(a.features, b.features, rtol=RTOL, atol=ATOL)


def test_acoustic_batched_equals_alone(stages) -> None:
    frontend, acoustic, _ = stages
    sentences = [s for encoded in frontend.execute(_requests(frontend)) for s in encoded]
    inputs = [acoustic.make_input(s.features, s.durations, 0, s.seed) for s in sentences]
    batched = acoustic.execute(inputs)
    assert len({int(s.durations.sum()) for s in sentences}) > 1  # ragged
    for one, together in zip(inputs, batched, strict=True):
        (alone,) = acoustic.execute([one])
        assert alone.shape == together.shape
        torch.testing.assert_close(alone, together, rtol=RTOL, atol=ATOL)


def test_vocoder_windows_batched_equal_alone(stages) -> None:
    _, _, vocoder = stages
    latents = [torch.randn(vocoder.channels, 40, generator=torch.Generator().manual_seed(i))
               for i in range(3)]  # fmt: skip
    windows = [vocoder.window_input(z) for z in latents]
    batched = vocoder.execute(windows)
    for window, together in zip(windows, batched, strict=True):
        (alone,) = vocoder.execute([window])
        torch.testing.assert_close(alone, together, rtol=0, atol=1e-5)


def test_a_seed_reproduces_and_another_differs(stages) -> None:
    frontend, acoustic, _ = stages
    prepared = list(frontend.prepare_iter(TEXTS[1]))

    def latent(seed: int) -> torch.Tensor:
        ((sentence,),) = frontend.execute([frontend.make_input(prepared, 1.0, 0, seed)])
        inputs = acoustic.make_input(sentence.features, sentence.durations, 0, sentence.seed)
        return acoustic.execute([inputs])[0]

    first = latent(5)
    assert torch.equal(first, latent(5))
    other = latent(6)
    assert other.shape != first.shape or not torch.allclose(other, first)
