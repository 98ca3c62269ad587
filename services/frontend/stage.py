"""The frontend stage: text -> normalised sentences -> phoneme ids -> features + durations.

The text half (normalisation, sentence split, G2P) runs on CPU; the torch half (phoneme
encoder + duration predictor) runs on the selected device, all sentences of a request in
one padded batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from services.frontend.analyzer import MAX_SENTENCE_CHARS, PreparedSentence, TextAnalyzer
from services.frontend.model import FrontendModel, durations_to_frames
from services.runtime.device import synchronize
from services.runtime.errors import InvalidArgument
from services.runtime.model_stage import TorchModelStage
from services.runtime.voice import HOP_LENGTH, MAX_TEXT_CHARS, SAMPLE_RATE_HZ
from services.runtime.voices import check_speaker

MODEL_NAME = "voxline-frontend-conv"
MODEL_VERSION = "0.1.0"


@dataclass
class EncodedSentence:
    """One sentence after the model: what the acoustic stage consumes."""

    index: int
    phoneme_ids: torch.Tensor  # [T] int64
    features: torch.Tensor  # [T, D] float, CPU
    durations: torch.Tensor  # [T] int32 frames
    num_chars: int
    #: Seed of this sentence's acoustic sampling noise (VITS voices; 0 for the student).
    seed: int = 0


@dataclass
class FrontendInput:
    """One request's input to the model: its prepared sentences and speaking rate."""

    sentences: list[PreparedSentence]
    speaking_rate: float


class FrontendStage(TorchModelStage[FrontendModel]):
    """Text analysis + phoneme encoder/duration model."""

    name = "frontend"
    model_name = MODEL_NAME
    model_version = MODEL_VERSION
    default_seed = 1234

    def __init__(
        self,
        device: str = "auto",
        dtype: str = "auto",
        checkpoint: str | None = None,
        seed: int | None = None,
        max_sentence_chars: int = MAX_SENTENCE_CHARS,
    ) -> None:
        super().__init__(device, dtype, checkpoint, seed)
        self._max_sentence_chars = max_sentence_chars
        self._analyzer: TextAnalyzer | None = None

    def build_model(self) -> FrontendModel:
        return FrontendModel()

    def load(self) -> None:
        super().load()
        self._analyzer = TextAnalyzer(max_sentence_chars=self._max_sentence_chars)

    def warmup(self) -> None:
        for _ in range(2):
            self.encode(self.prepare("Warm-up: the 3 quick foxes cost $4.50. Done!"), 1.0)

    @property
    def seconds_per_frame(self) -> float:
        """Audio seconds one duration frame lasts."""
        return HOP_LENGTH / SAMPLE_RATE_HZ

    def prepare(self, text: str) -> list[PreparedSentence]:
        """The text half (CPU) for a whole text: normalise, split, G2P, map to ids."""
        return list(self.prepare_iter(text))

    def prepare_iter(
        self, text: str, max_text_chars: int = MAX_TEXT_CHARS
    ) -> Iterator[PreparedSentence]:
        """`prepare`, one sentence at a time (see :class:`TextAnalyzer`)."""
        assert self._analyzer is not None, "load() first"
        return self._analyzer.prepare_iter(text, max_text_chars)

    def make_input(
        self, sentences: list[PreparedSentence], speaking_rate: float, speaker_id: int, seed: int
    ) -> FrontendInput:
        """One request's model input (the student has one speaker and no sampling noise)."""
        check_speaker(speaker_id, speakers=1)
        return FrontendInput(sentences, speaking_rate)

    def encode(
        self, sentences: list[PreparedSentence], speaking_rate: float
    ) -> list[EncodedSentence]:
        """The torch half for one request (a batch of one; see :meth:`execute`)."""
        return self.execute([FrontendInput(sentences, speaking_rate)])[0]

    @torch.inference_mode()
    def execute(self, requests: list[FrontendInput]) -> list[list[EncodedSentence]]:
        """The torch half for a batch of requests: every sentence of every request in one
        padded batch through encoder + duration predictor (the model masks the padding), then
        durations at each request's own speaking rate."""
        assert self.model is not None
        for r in requests:
            if r.speaking_rate <= 0:
                raise InvalidArgument(f"speaking_rate must be > 0, got {r.speaking_rate:g}")
        sentences = [s for r in requests for s in r.sentences]
        lengths = torch.tensor([len(s.phoneme_ids) for s in sentences])
        ids = torch.nn.utils.rnn.pad_sequence(
            [s.phoneme_ids for s in sentences], batch_first=True, padding_value=0
        )
        features, log_durations = self.model(ids.to(self.device), lengths.to(self.device))
        synchronize(self.device)
        features, log_durations = features.float().cpu(), log_durations.float().cpu()
        out: list[list[EncodedSentence]] = []
        row = 0
        for r in requests:
            rows = slice(row, row + len(r.sentences))
            frames = durations_to_frames(log_durations[rows], r.speaking_rate)
            encoded = []
            for i, s in enumerate(r.sentences):
                n = int(lengths[row + i])
                durations = frames[i, :n].clone()
                if int(durations.sum()) == 0:  # a very high rate can round everything away
                    durations[n // 2] = 1
                encoded.append(
                    EncodedSentence(
                        s.index, s.phoneme_ids, features[row + i, :n], durations, s.num_chars
                    )
                )
            out.append(encoded)
            row += len(r.sentences)
        return out

    @staticmethod
    def batch_length(request: FrontendInput) -> int:
        """Padded length of a request's rows: its longest sentence in phoneme ids."""
        return max(len(s.phoneme_ids) for s in request.sentences)
