"""The frontend stage: text -> normalised sentences -> phoneme ids -> features + durations.

The text half (normalisation, sentence split, G2P) runs on CPU; the torch half (phoneme
encoder + duration predictor) runs on the selected device, all sentences of a request in
one padded batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from services.frontend.g2p import PhonemeIdMapper, Phonemizer
from services.frontend.model import FrontendModel, durations_to_frames
from services.frontend.normalize import is_speakable, normalize
from services.frontend.sentences import split_sentences
from services.runtime.device import synchronize
from services.runtime.errors import InvalidArgument
from services.runtime.model_stage import TorchModelStage

MODEL_NAME = "voxline-frontend-conv"
MODEL_VERSION = "0.1.0"


@dataclass
class PreparedSentence:
    """One sentence after the text half: ids only (the text itself is not kept)."""

    index: int
    phoneme_ids: torch.Tensor  # [T] int64
    num_chars: int


@dataclass
class EncodedSentence:
    """One sentence after the model: what the acoustic stage consumes."""

    index: int
    phoneme_ids: torch.Tensor  # [T] int64
    features: torch.Tensor  # [T, D] float, CPU
    durations: torch.Tensor  # [T] int32 frames
    num_chars: int


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
        max_sentence_chars: int = 400,
    ) -> None:
        super().__init__(device, dtype, checkpoint, seed)
        self._max_sentence_chars = max_sentence_chars
        self._phonemizer: Phonemizer | None = None
        self._mapper: PhonemeIdMapper | None = None

    def build_model(self) -> FrontendModel:
        return FrontendModel()

    def load(self) -> None:
        super().load()
        self._phonemizer = Phonemizer()
        self._mapper = PhonemeIdMapper()

    def warmup(self) -> None:
        for _ in range(2):
            self.encode(self.prepare("Warm-up: the 3 quick foxes cost $4.50. Done!"), 1.0)

    def prepare(self, text: str) -> list[PreparedSentence]:
        """The text half (CPU) for a whole text: normalise, split, G2P, map to ids."""
        return list(self.prepare_iter(text))

    def prepare_iter(self, text: str) -> Iterator[PreparedSentence]:
        """`prepare`, one sentence at a time: G2P (the costly part) runs only as sentences
        are asked for. Raises InvalidArgument before the first sentence when the text has
        nothing speakable, or after the last when no sentence had phonemes."""
        assert self._phonemizer is not None and self._mapper is not None
        if not is_speakable(text):
            raise InvalidArgument("text has nothing speakable (empty, whitespace or control chars)")
        count = 0
        for sentence in split_sentences(normalize(text), self._max_sentence_chars):
            ids = self._mapper.ids(self._phonemizer.phonemes(sentence))
            if len(ids) <= 3:  # BOS, pad, EOS only: nothing to say (e.g. lone punctuation)
                continue
            yield PreparedSentence(count, torch.tensor(ids, dtype=torch.int64), len(sentence))
            count += 1
        if not count:
            raise InvalidArgument("text produced no pronounceable phonemes")

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
                raise InvalidArgument(f"speaking_rate must be > 0, got {r.speaking_rate}")
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
