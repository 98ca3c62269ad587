"""The Piper joe voice served as three VITS stages beside the student, through the real stack.

One local stack serving every shipped voice (VOXLINE_VOICES=all) with the VITS voice as its
default, as the GPU overlay configures it (VOXLINE_DEFAULT_VOICE): the catalogue, routing by
the `voice` field, per-request seeds, streaming vs unary, and bad speaker/voice input.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from voxline.v1 import synthesizer_pb2, synthesizer_pb2_grpc

from services.cli.client import list_voices, synthesize
from services.cli.stack import LocalStack
from services.runtime.voice import VOICE_NAME
from services.voices.catalog import JOE_VOICE as JOE

TEXT = "The weather will be sunny and warm tomorrow afternoon. See you then!"


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"VOXLINE_VOICES": "all", "VOXLINE_DEFAULT_VOICE": JOE}
    with LocalStack(tmp_path_factory.mktemp("vits"), env=env) as stack:
        yield stack


def _pcm(stack: LocalStack, **kwargs: object) -> np.ndarray:
    result = synthesize(stack.gateway, TEXT, timeout=120, **kwargs)  # type: ignore[arg-type]
    return np.frombuffer(result.pcm, dtype="<i2").astype(np.int32)


def test_list_voices_describes_both_voices(both: LocalStack) -> None:
    reply = list_voices(both.gateway)
    assert reply.default_voice == JOE
    voices = {v.name: v for v in reply.voices}
    assert set(voices) == {JOE, VOICE_NAME}
    joe, student = voices[JOE], voices[VOICE_NAME]
    assert joe.architecture == "vits" and student.architecture == "fastspeech"
    assert joe.trained and joe.native_sample_rate_hz == 22050 and list(joe.speakers) == []
    assert joe.language_code == "en-US"
    assert set(joe.weights_sha256) == {"frontend", "acoustic", "vocoder"}
    assert all(len(h) == 64 for h in joe.weights_sha256.values())
    assert "vits-frontend" in joe.model_version and "vits-vocoder" in joe.model_version


def test_voice_field_routes_and_the_configured_default_serves(both: LocalStack) -> None:
    default = _pcm(both, seed=7)
    joe = _pcm(both, voice=JOE, seed=7)
    student = _pcm(both, voice=VOICE_NAME)
    assert np.array_equal(default, joe)
    assert len(student) != len(joe) or not np.array_equal(student, joe)


def test_same_seed_same_audio_other_seed_other_audio(both: LocalStack) -> None:
    first, again = _pcm(both, voice=JOE, seed=42), _pcm(both, voice=JOE, seed=42)
    assert np.array_equal(first, again)
    other = _pcm(both, voice=JOE, seed=43)
    assert len(other) != len(first) or not np.array_equal(other, first)


def test_streamed_equals_unary_for_one_seed(both: LocalStack) -> None:
    unary = _pcm(both, voice=JOE, seed=5)
    streamed = _pcm(both, voice=JOE, seed=5, stream=True)
    assert len(streamed) == len(unary)
    noise = float(np.sum((streamed - unary) ** 2)) or 1e-9
    snr_db = 10 * np.log10(float(np.sum(unary.astype(np.float64) ** 2)) / noise)
    assert snr_db >= 60, f"stream vs unary SNR {snr_db:.1f} dB"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"voice": JOE, "speaker": "nobody"}, "unknown speaker"),
        ({"voice": "no-such-voice"}, "unknown voice; available voices"),
    ],
)
def test_bad_speaker_or_voice_is_invalid_argument(
    both: LocalStack, fields: dict[str, str], message: str
) -> None:
    with grpc.insecure_channel(both.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Synthesize(synthesizer_pb2.SynthesizeRequest(text="Hello.", **fields), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    assert "nobody" not in (err.value.details() or "")  # caller input is never echoed
