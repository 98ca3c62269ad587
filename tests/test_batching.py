"""Batched execution equals unbatched execution, for every stage, with ragged inputs.

Each stage's `execute(list)` is what the scheduler calls with several requests' inputs; these
tests compare a batch of requests of different lengths against each request run alone (a
batch of one) with the shipped, trained weights.
"""

from __future__ import annotations

import pytest
import torch

from services.acoustic.stage import AcousticInput, AcousticStage
from services.frontend.stage import FrontendInput, FrontendStage
from services.runtime.voice import resolve_checkpoint
from services.vocoder.stage import VocoderStage

TEXTS = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog, twice.",
    "It costs $3.50. Dr. Smith said so on March 3rd, and then left for the day.",
]
RATES = [1.0, 1.3, 0.8]


@pytest.fixture(scope="module")
def frontend() -> FrontendStage:
    stage = FrontendStage(device="cpu", checkpoint=resolve_checkpoint("auto", "frontend"))
    stage.load()
    return stage


@pytest.fixture(scope="module")
def acoustic() -> AcousticStage:
    stage = AcousticStage(device="cpu", checkpoint=resolve_checkpoint("auto", "acoustic"))
    stage.load()
    return stage


@pytest.fixture(scope="module", params=["hifigan", "fast"])
def vocoder(request: pytest.FixtureRequest) -> VocoderStage:
    checkpoint = resolve_checkpoint("auto", "vocoder") if request.param == "fast" else None
    stage = VocoderStage(vocoder=request.param, device="cpu", checkpoint=checkpoint)
    stage.load()
    return stage


@pytest.fixture(scope="module")
def requests(frontend: FrontendStage) -> list[FrontendInput]:
    return [FrontendInput(frontend.prepare(t), r) for t, r in zip(TEXTS, RATES, strict=True)]


def test_frontend_batch_equals_alone(
    frontend: FrontendStage, requests: list[FrontendInput]
) -> None:
    lengths = {len(s.phoneme_ids) for r in requests for s in r.sentences}
    assert len(lengths) > 2, "the test needs ragged sentence lengths"
    batched = frontend.execute(requests)
    for request, together in zip(requests, batched, strict=True):
        (alone,) = frontend.execute([request])
        assert len(together) == len(alone) == len(request.sentences)
        for a, b in zip(alone, together, strict=True):
            assert torch.allclose(a.features, b.features, atol=1e-4), "features differ"
            assert torch.equal(a.durations, b.durations), "durations differ"


def test_acoustic_batch_equals_alone(
    frontend: FrontendStage, acoustic: AcousticStage, requests: list[FrontendInput]
) -> None:
    inputs = [AcousticInput(s.features, s.durations) for r in frontend.execute(requests) for s in r]
    assert len({int(i.durations.sum()) for i in inputs}) == len(inputs), "ragged frame counts"
    batched = acoustic.execute(inputs)
    for item, together in zip(inputs, batched, strict=True):
        (alone,) = acoustic.execute([item])
        assert together.shape == alone.shape == (80, int(item.durations.sum()))
        assert torch.allclose(alone, together, atol=1e-4), (alone - together).abs().max()


def test_vocoder_batch_equals_alone(vocoder: VocoderStage) -> None:
    torch.manual_seed(0)
    # Streaming windows: two of the steady-state length, one first window, one tail.
    mels = [torch.randn(80, n) * 2 - 5 for n in (72, 28, 72, 41)]
    batched = vocoder.execute(mels)
    for mel, together in zip(mels, batched, strict=True):
        (alone,) = vocoder.execute([mel])
        assert together.shape == alone.shape == (mel.shape[1] * 256,)
        assert torch.allclose(alone, together, atol=1e-4), (alone - together).abs().max()


def test_vocoder_batch_keys_bucket_by_length(vocoder: VocoderStage) -> None:
    assert vocoder.batch_key(torch.zeros(80, 72)) == vocoder.batch_key(torch.ones(80, 72))
    assert vocoder.batch_key(torch.zeros(80, 72)) != vocoder.batch_key(torch.zeros(80, 28))
