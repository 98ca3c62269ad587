"""Property-based fuzzing of the public API: random unicode, sizes, rates, sample rates, voices
and request ids. Whatever arrives, the gateway answers with audio or a precise status and a
human message -- never INTERNAL/UNKNOWN, never a hang -- and keeps serving."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from voxline.v1 import synthesizer_pb2 as pb

# Codes a caller's input may legitimately earn. INTERNAL, UNKNOWN (a crash) and
# DEADLINE_EXCEEDED (a hang: the first answer is due within seconds) are failures.
ACCEPTABLE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FIRST_ANSWER_TIMEOUT_S = 30

texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=4000, max_size=6000),
    st.sampled_from(
        ["Hello there.", "$1,234.56 on 3/4/2026.", "Dr. Smith... ok?!", "\u200b\u202e"]
    ),
)
requests = st.builds(
    pb.SynthesizeRequest,
    text=texts,
    voice=st.one_of(st.just(""), st.text(max_size=40)),
    speaking_rate=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(1.0)),
    sample_rate_hz=st.one_of(
        st.sampled_from([0, 8000, 16000, 22050, 24000, 44100, 48000]),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
    ),
    request_id=st.one_of(st.just(""), st.text(max_size=200)),
    priority=st.integers(min_value=0, max_value=5),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests, stream=st.booleans())
def test_public_api_never_crashes_or_hangs(
    synthesizer, request: pb.SynthesizeRequest, stream: bool
) -> None:
    try:
        if stream:
            call = synthesizer.SynthesizeStream(request, timeout=FIRST_ANSWER_TIMEOUT_S)
            first = next(call)  # validation and the first sentence; the rest is not fuzzed
            call.cancel()
            assert first.audio or first.sample_rate_hz
        else:
            # A short text's whole answer; a long one's validation (it cannot finish in time,
            # so only an immediate rejection is checked for it).
            if len(request.text) > 200:
                request.speaking_rate = float("nan")  # invalid: answered before any work
            synthesizer.Synthesize(request, timeout=FIRST_ANSWER_TIMEOUT_S)
    except grpc.RpcError as exc:
        assert exc.code() in ACCEPTABLE, (exc.code(), exc.details())
        assert exc.details() and "internal error" not in exc.details()


def test_still_serving_after_fuzzing(synthesizer) -> None:
    reply = synthesizer.Synthesize(pb.SynthesizeRequest(text="Still here."), timeout=60)
    assert reply.duration_seconds > 0.2
