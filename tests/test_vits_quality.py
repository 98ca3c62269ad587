"""The VITS voice sounds like Piper itself: held-out sentences through the real stack vs the
unmodified Piper voice in onnxruntime, both at the voice's own noise settings.

One noise draw per sentence with fixed seeds on both sides (the stack's `seed`, onnxruntime's
`set_seed`), so the scores are reproducible; the margins over what was measured leave room for
a different CPU's rounding. The full comparison (three draws, the student too) is
`python -m training voice-quality` (docs/voice-quality.json, docs/models.md): Piper WER 0.097,
HNR 8.97 dB; the VITS voice 0.071, 8.88 dB.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.cli.stack import LocalStack
from services.voices.catalog import JOE_VOICE as JOE
from training.asr import Recognizer
from training.voice_quality import SystemScore, piper_reader, score, stack_reader

#: The issue's bounds are +0.01 WER and -0.5 dB HNR on averages over many draws; one draw per
#: sentence gets more room for WER (one word of 16 sentences moves the mean ~0.007).
MAX_WER_OVER_PIPER = 0.03
MAX_HNR_BELOW_PIPER_DB = 0.5
MAX_WER = 0.15


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("quality"), env={"VOXLINE_VOICES": JOE}) as s:
        yield s


@pytest.fixture(scope="module")
def scores(stack: LocalStack) -> tuple[SystemScore, SystemScore]:
    asr = Recognizer()
    piper = score("piper", piper_reader(), asr, draws=1)
    vits = score(JOE, stack_reader(stack.gateway, JOE), asr, draws=1)
    return piper, vits


def test_as_intelligible_as_piper(scores: tuple[SystemScore, SystemScore]) -> None:
    piper, vits = scores
    assert vits.wer <= MAX_WER and vits.wer <= piper.wer + MAX_WER_OVER_PIPER, (
        f"VITS {vits.wer:.3f} vs Piper {piper.wer:.3f}: "
        + "; ".join(f"{r['wer']:.2f} {r['transcript']!r}" for r in vits.readings)
    )


def test_voicing_as_clean_as_piper(scores: tuple[SystemScore, SystemScore]) -> None:
    piper, vits = scores
    assert vits.hnr_db >= piper.hnr_db - MAX_HNR_BELOW_PIPER_DB, (vits.hnr_db, piper.hnr_db)
    assert vits.cpps_db >= piper.cpps_db - MAX_HNR_BELOW_PIPER_DB, (vits.cpps_db, piper.cpps_db)
