"""The frontend stage of a VITS voice: text -> phoneme ids -> prior + integer durations.

The text half is the shared :class:`TextAnalyzer` with the voice's espeak-ng language and
phoneme-id map; the torch half is the voice's text encoder and stochastic duration predictor
(:class:`services.vits.parts.VitsFrontendModel`). The prior's mean and log-scale travel to
the acoustic stage as one feature matrix ``[T, 2C]`` (mean channels first).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from services.frontend.analyzer import MAX_SENTENCE_CHARS, PreparedSentence, TextAnalyzer
from services.frontend.g2p import PhonemeIdMapper
from services.frontend.stage import EncodedSentence
from services.runtime.device import synchronize
from services.runtime.errors import InvalidArgument
from services.runtime.voice import MAX_TEXT_CHARS
from services.vits.parts import VitsFrontendModel
from services.vits.stage import VitsStage, derive_seed, gaussian

#: Channels of the duration predictor's noise (VITS's stochastic duration predictor).
DP_NOISE_CHANNELS = 2


@dataclass
class VitsFrontendInput:
    """One request's input: its sentences, VITS scales, speaker and seed."""

    sentences: list[PreparedSentence]
    length_scale: float
    noise_w: float
    speaker_id: int
    seed: int


class VitsFrontendStage(VitsStage[VitsFrontendModel]):
    """Text analysis + VITS text encoder and duration predictor for one voice folder."""

    name = "frontend"
    part = "frontend"

    def __init__(
        self,
        folder: Path,
        device: str = "auto",
        dtype: str = "auto",
        max_sentence_chars: int = MAX_SENTENCE_CHARS,
    ) -> None:
        super().__init__(folder, device, dtype)
        self._max_sentence_chars = max_sentence_chars
        self._analyzer: TextAnalyzer | None = None

    def load(self) -> None:
        super().load()
        phonemes = self.config.phonemes
        mapper = PhonemeIdMapper(
            config={"phoneme_id_map": phonemes.id_map, "espeak_voice": phonemes.espeak_voice}
        )
        self._analyzer = TextAnalyzer(mapper, phonemes.espeak_voice, self._max_sentence_chars)

    def warmup(self) -> None:
        sentences = list(self.prepare_iter("Warm-up: the 3 quick foxes cost $4.50. Done!"))
        for _ in range(2):
            self.execute([self.make_input(sentences, 1.0, 0, 0)])

    @property
    def seconds_per_frame(self) -> float:
        """Audio seconds one duration frame lasts."""
        return self.config.hop_length / self.config.sample_rate_hz

    def prepare_iter(
        self, text: str, max_text_chars: int = MAX_TEXT_CHARS
    ) -> Iterator[PreparedSentence]:
        """Sentences of phoneme ids, one at a time (see :class:`TextAnalyzer`)."""
        assert self._analyzer is not None, "load() first"
        return self._analyzer.prepare_iter(text, max_text_chars)

    def make_input(
        self, sentences: list[PreparedSentence], speaking_rate: float, speaker_id: int, seed: int
    ) -> VitsFrontendInput:
        """One request's model input: the voice's scales, its length scale divided by the
        speaking rate."""
        if speaking_rate <= 0:
            raise InvalidArgument(f"speaking_rate must be > 0, got {speaking_rate:g}")
        scales = self.config.inference
        return VitsFrontendInput(
            sentences,
            length_scale=scales.length_scale / speaking_rate,
            noise_w=scales.noise_w,
            speaker_id=self.check_speaker(speaker_id),
            seed=seed,
        )

    @torch.inference_mode()
    def execute(self, requests: list[VitsFrontendInput]) -> list[list[EncodedSentence]]:
        """Every sentence of every request in one padded batch. Each sentence draws its
        duration noise from its own seed, so a row is computed exactly as it would be alone."""
        assert self.model is not None
        rows = [(r, s) for r in requests for s in r.sentences]
        lengths = torch.tensor([len(s.phoneme_ids) for _, s in rows])
        ids = torch.nn.utils.rnn.pad_sequence([s.phoneme_ids for _, s in rows], batch_first=True)
        noise = torch.zeros(len(rows), DP_NOISE_CHANNELS, ids.shape[1])
        for i, (r, s) in enumerate(rows):
            noise[i, :, : lengths[i]] = gaussian(
                (DP_NOISE_CHANNELS, int(lengths[i])), derive_seed(r.seed, s.index, "duration")
            )
        m_p, logs_p, durations = self.model(
            ids.to(self.device),
            lengths.to(self.device),
            noise.to(self.device, self.dtype),
            self._per_row([r.noise_w for r, _ in rows]),
            self._per_row([r.length_scale for r, _ in rows]),
            self.speaker_ids([r.speaker_id for r, _ in rows]),
        )
        synchronize(self.device)
        features = torch.cat([m_p, logs_p], dim=1).transpose(1, 2).float().cpu()
        durations = durations.cpu()
        encoded = [
            self._encoded(r, s, features[i, : lengths[i]], durations[i, : lengths[i]])
            for i, (r, s) in enumerate(rows)
        ]
        out, start = [], 0
        for r in requests:
            out.append(encoded[start : start + len(r.sentences)])
            start += len(r.sentences)
        return out

    def _per_row(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=self.dtype, device=self.device)

    @staticmethod
    def _encoded(
        request: VitsFrontendInput,
        sentence: PreparedSentence,
        features: torch.Tensor,
        durations: torch.Tensor,
    ) -> EncodedSentence:
        durations = durations.to(torch.int32).clone()
        if int(durations.sum()) == 0:  # a very high rate can round everything away
            durations[len(durations) // 2] = 1
        return EncodedSentence(
            sentence.index,
            sentence.phoneme_ids,
            features.contiguous(),
            durations,
            sentence.num_chars,
            seed=derive_seed(request.seed, sentence.index, "prior"),
        )

    @staticmethod
    def batch_key(request: VitsFrontendInput) -> None:
        return None

    @staticmethod
    def batch_length(request: VitsFrontendInput) -> int:
        """Padded length of a request's rows: its longest sentence in phoneme ids."""
        return max(len(s.phoneme_ids) for s in request.sentences)
