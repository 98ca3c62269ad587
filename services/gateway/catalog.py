"""The voices the gateway serves: those all three stages hold, asked of them in the background.

Each stage's `StageInfo.GetModelInfo` lists its voices with their model facts
(`voice_models`); a voice is served when frontend, acoustic and vocoder all hold it. The
default voice is the stages' own (the frontend lists it first).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from voxline.v1 import stage_pb2, synthesizer_pb2

from services.gateway.audio import SUPPORTED_SAMPLE_RATES
from services.gateway.stages import StageClients
from services.runtime.errors import InvalidArgument, Unavailable

log = logging.getLogger("voxline.gateway.catalog")


@dataclass(frozen=True)
class VoiceFacts:
    """What the gateway needs to run a request for one voice."""

    name: str
    sample_rate_hz: int
    #: Output samples per frame of the voice's frame-rate features.
    hop_length: int
    #: Speaker names in id order; empty for a single-speaker voice.
    speakers: tuple[str, ...] = ()

    @property
    def seconds_per_frame(self) -> float:
        return self.hop_length / self.sample_rate_hz

    def speaker_id(self, speaker: str) -> int:
        """The id of `speaker` ("" = the first). The name is not echoed (caller input)."""
        if not speaker:
            return 0
        if speaker not in self.speakers:
            listed = ", ".join(self.speakers) if self.speakers else "none (single speaker)"
            raise InvalidArgument(f"unknown speaker for voice {self.name}; speakers: {listed}")
        return self.speakers.index(speaker)


def _models(info: stage_pb2.ModelInfo) -> dict[str, stage_pb2.VoiceModel]:
    return {m.voice: m for m in info.voice_models}


def _voice(
    name: str,
    frontend: stage_pb2.VoiceModel,
    acoustic: stage_pb2.VoiceModel,
    vocoder: stage_pb2.VoiceModel,
) -> synthesizer_pb2.Voice:
    trained = frontend.trained and acoustic.trained
    if not trained:
        description = (
            "UNTRAINED: frontend/acoustic weights are a seeded initialisation; output has the "
            "right length and format but is not intelligible speech"
        )
    elif frontend.architecture == "vits":
        description = "Piper VITS voice, served as three torch stages"
    else:
        description = "Distilled FastSpeech-style student voice"
    return synthesizer_pb2.Voice(
        name=name,
        language_code=frontend.language_code,
        native_sample_rate_hz=vocoder.sample_rate_hz,
        supported_sample_rates_hz=list(SUPPORTED_SAMPLE_RATES),
        trained=trained,
        model_version="+".join(
            f"{m.model_name}@{m.model_version}" for m in (frontend, acoustic, vocoder)
        ),
        description=description,
        architecture=frontend.architecture,
        speakers=list(frontend.speakers),
        weights_sha256={
            "frontend": frontend.weights_sha256,
            "acoustic": acoustic.weights_sha256,
            "vocoder": vocoder.weights_sha256,
        },
    )


#: How often the served voices are asked of the stages again (a rollout changes them).
REFRESH_S = 30.0
#: Until the first answer, how often the stages are asked (they may still be loading).
RETRY_S = 1.0


@dataclass(frozen=True)
class _Snapshot:
    voices: list[synthesizer_pb2.Voice]
    facts: dict[str, VoiceFacts]


class VoiceCatalog:
    """The voices the stages serve, asked of them at start and again every `refresh_s` on a
    thread of its own: a request reads the latest answer and never waits on the stages (only
    the first requests, while a starting gateway has no answer yet, wait up to `timeout`)."""

    def __init__(
        self, clients: StageClients, timeout: float = 5.0, refresh_s: float = REFRESH_S
    ) -> None:
        self._clients = clients
        self._timeout = timeout
        self._refresh_s = refresh_s
        self._changed = threading.Condition()
        self._snapshot: _Snapshot | None = None
        #: Why the last fetch failed (None after a success): what callers hear meanwhile.
        self._failure: Exception | None = None
        self._wanted = False  # a request waits for a first answer: fetch now
        self._stopped = False

    def start(self) -> VoiceCatalog:
        """Load now and keep refreshing in the background (until `stop`)."""
        threading.Thread(target=self._refresh, name="voice-catalog", daemon=True).start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _refresh(self) -> None:
        failing = False
        while True:
            try:
                snapshot, failure = self._fetch(), None
            except Exception as exc:  # the stages are loading, restarting or unreachable
                snapshot, failure = None, exc
                if not failing:  # once per outage: the last answer stays in use
                    log.warning("cannot refresh the voice list: %s", exc)
            failing = failure is not None
            with self._changed:
                self._snapshot = snapshot or self._snapshot
                self._failure = failure
                self._changed.notify_all()
                # Until a first answer, a request asking for the list wakes this at once.
                pause = self._refresh_s if self._snapshot else RETRY_S
                self._changed.wait_for(lambda: self._stopped or self._wanted, pause)
                self._wanted = False
                if self._stopped:
                    return

    def _fetch(self) -> _Snapshot:
        frontend, acoustic, vocoder = (_models(c.info(self._timeout)) for c in self._clients.all())
        # The frontend lists the default voice first.
        names = [n for n in frontend if n in acoustic and n in vocoder]
        voices = [_voice(n, frontend[n], acoustic[n], vocoder[n]) for n in names]
        facts = {
            n: VoiceFacts(
                n,
                vocoder[n].sample_rate_hz,
                vocoder[n].hop_length,
                tuple(frontend[n].speakers),
            )
            for n in names
        }
        return _Snapshot(voices, facts)

    def _current(self) -> _Snapshot:
        """The last answer; with none yet, a fetch is asked for now and the answer awaited
        (up to `timeout`, retries included); the last failure is what the caller hears (it
        names the stage)."""
        with self._changed:
            if self._snapshot is None:  # fetch now, then keep to the retries until timeout
                self._wanted = True
                self._changed.notify_all()
                self._changed.wait_for(lambda: self._snapshot is not None, self._timeout)
            if self._snapshot is not None:
                return self._snapshot
            failure = self._failure
        if isinstance(failure, Unavailable):
            raise Unavailable(f"{failure}; the voice list is not known yet")
        raise Unavailable("the voice list is not known yet (the stages are starting); retry")

    def voices(self) -> list[synthesizer_pb2.Voice]:
        """Every served voice, the default first."""
        return self._current().voices

    def facts(self) -> dict[str, VoiceFacts]:
        """Served voice name -> its facts, the default first."""
        return self._current().facts

    def default_voice(self) -> str:
        """The voice an empty voice name selects ("" while no voice is served)."""
        voices = self.voices()
        return voices[0].name if voices else ""

    def cached_default_voice(self) -> str:
        """The default voice as known so far ("": none known yet; never waits)."""
        snapshot = self._snapshot
        return snapshot.voices[0].name if snapshot and snapshot.voices else ""

    def cached_names(self) -> set[str]:
        """Voice names known so far (never waits)."""
        snapshot = self._snapshot
        return {v.name for v in snapshot.voices} if snapshot else set()
