"""The voice catalogue (services/voices/catalog.py) and the multi-voice stage router
(services/runtime/voices.py): which voices are served, the default, routing and batching."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from voxline.v1 import stage_pb2

from services.gateway.catalog import VoiceCatalog
from services.runtime.errors import InvalidArgument, Unavailable
from services.runtime.stage import ModelDescription
from services.runtime.voices import Routed, VoiceRouter
from services.voices import VoiceNotFound
from services.voices.catalog import JOE_VOICE, PREFERRED_DEFAULT_VOICE, default_voice, select


def _voice_folder(root: Path, name: str, architecture: str | None) -> None:
    (root / name).mkdir(parents=True)
    config = {"voice": name} if architecture is None else {"architecture": architecture}
    (root / name / "config.json").write_text(json.dumps(config))


@pytest.fixture
def voices_root(tmp_path: Path) -> Path:
    _voice_folder(tmp_path, "voxline-en-us", None)  # format 1: no architecture field
    _voice_folder(tmp_path, JOE_VOICE, "vits")
    _voice_folder(tmp_path, "de_DE-thorsten-medium", "vits")
    return tmp_path


def test_select_all_and_by_name(voices_root: Path) -> None:
    everything = select("all", voices_root)
    assert [e.name for e in everything] == sorted(e.name for e in everything)
    assert {e.name: e.architecture for e in everything}["voxline-en-us"] == "fastspeech"
    chosen = select(f"voxline-en-us, {JOE_VOICE}", voices_root)
    assert [e.name for e in chosen] == ["voxline-en-us", JOE_VOICE]


def test_missing_voice_and_unknown_architecture_are_one_line_errors(voices_root: Path) -> None:
    with pytest.raises(VoiceNotFound, match=r"nope not found .* found: "):
        select("voxline-en-us,nope", voices_root)
    _voice_folder(voices_root, "odd", "tacotron")
    with pytest.raises(VoiceNotFound, match="unknown architecture 'tacotron'"):
        select("all", voices_root)


def test_default_voice_rules(voices_root: Path) -> None:
    entries = select("all", voices_root)
    assert default_voice(entries) == PREFERRED_DEFAULT_VOICE == "voxline-en-us"
    vits_only = select(f"de_DE-thorsten-medium,{JOE_VOICE}", voices_root)
    assert default_voice(vits_only) == "de_DE-thorsten-medium"  # the first served
    assert default_voice(entries, JOE_VOICE) == JOE_VOICE
    with pytest.raises(VoiceNotFound, match="not served"):
        default_voice(vits_only, PREFERRED_DEFAULT_VOICE)


class _Stage:
    """A single-voice stage of the `Stage` protocol that records its batches."""

    def __init__(self, voice: str) -> None:
        self.voice = voice
        self.batches: list[list[int]] = []

    def load(self) -> None: ...
    def warmup(self) -> None: ...
    def finalize(self) -> None: ...

    def describe(self) -> ModelDescription:
        return ModelDescription(
            self.voice, "m", "1", True, "cpu", "float32", (self.voice,), 22050, "", ""
        )

    def execute(self, requests: list[int]) -> list[str]:
        self.batches.append(requests)
        return [f"{self.voice}:{r}" for r in requests]

    @staticmethod
    def batch_key(request: int) -> int:
        return request % 2

    @staticmethod
    def batch_length(request: int) -> int:
        return request


def test_router_never_mixes_voices_and_keeps_order() -> None:
    a, b = _Stage("a"), _Stage("b")
    router = VoiceRouter("acoustic", {"a": a, "b": b}, default_voice="b")
    requests = [Routed("a", 1), Routed("b", 2), Routed("a", 3)]
    assert list(router.execute(requests)) == ["a:1", "b:2", "a:3"]
    assert a.batches == [[1, 3]] and b.batches == [[2]]
    assert router.batch_key(Routed("a", 3)) != router.batch_key(Routed("b", 3))
    assert router.batch_key(Routed("a", 1)) == router.batch_key(Routed("a", 3))
    assert router.batch_length(Routed("a", 7)) == 7


def test_router_resolves_voices_default_first() -> None:
    router = VoiceRouter("frontend", {"a": _Stage("a"), "b": _Stage("b")}, default_voice="b")
    assert router.voices == ("b", "a")
    assert router.resolve("") == "b" and router.resolve("a") == "a"
    with pytest.raises(InvalidArgument, match="unknown voice; available voices: a, b"):
        router.resolve("secret caller text")
    description = router.describe()
    assert description.voices == ("b", "a")
    assert [d.voices[0] for d in description.voice_models()] == ["b", "a"]
    single = replace(description, per_voice=())
    assert single.voice_models() == (single,)
    with pytest.raises(ValueError, match="default voice 'c'"):
        VoiceRouter("vocoder", {"a": _Stage("a")}, default_voice="c")


class _FakeStage:
    """A stage's StageInfo answer (voice models), failing while `down`."""

    def __init__(self, voices: list[str]) -> None:
        self.voices = voices
        self.down = False
        self.calls = 0

    def info(self, timeout: float) -> stage_pb2.ModelInfo:
        self.calls += 1
        if self.down:
            raise Unavailable("stage unavailable")
        models = [
            stage_pb2.VoiceModel(voice=v, sample_rate_hz=22050, hop_length=256, trained=True)
            for v in self.voices
        ]
        return stage_pb2.ModelInfo(voice_models=models)


class _FakeClients:
    def __init__(self, stages: list[_FakeStage]) -> None:
        self.stages = stages

    def all(self) -> list[_FakeStage]:
        return self.stages


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def test_gateway_voice_list_loads_at_start_and_refreshes_in_the_background() -> None:
    """No request waits on the stages: the list is fetched before any request and again
    every refresh; an outage keeps the last answer; a rollout's new voice shows up."""
    stages = [_FakeStage(["a", "b"]) for _ in range(3)]
    catalog = VoiceCatalog(_FakeClients(stages), refresh_s=0.05).start()  # type: ignore[arg-type]
    try:
        _wait_for(lambda: stages[0].calls >= 1)
        assert list(catalog.facts()) == ["a", "b"]
        for stage in stages:
            stage.down = True
        calls = stages[0].calls
        _wait_for(lambda: stages[0].calls > calls + 2)
        assert list(catalog.facts()) == ["a", "b"]  # the last answer, while the stages are down
        for stage in stages:
            stage.down, stage.voices = False, ["a", "b", "c"]
        _wait_for(lambda: "c" in catalog.cached_names())
        assert catalog.default_voice() == "a"
    finally:
        catalog.stop()


def test_gateway_voice_list_unknown_yet_is_unavailable_not_a_hang() -> None:
    stages = [_FakeStage(["a"]) for _ in range(3)]
    for stage in stages:
        stage.down = True
    catalog = VoiceCatalog(_FakeClients(stages), timeout=0.2).start()  # type: ignore[arg-type]
    try:
        with pytest.raises(Unavailable, match="not known yet"):
            catalog.facts()
        assert catalog.cached_names() == set()
    finally:
        catalog.stop()
