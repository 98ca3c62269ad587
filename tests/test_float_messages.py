"""Float fields of a request are echoed in error messages as the caller wrote them: a proto
float32 0.1 arrives as 0.10000000149011612 and must read "0.1"."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.gateway.catalog import VoiceFacts
from services.gateway.validation import float32_text, validate_options
from services.runtime.errors import InvalidArgument

VOICES = {"v": VoiceFacts("v", 22050, 256)}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (4.0000005, "4.0000005"),  # just past the limit: still visibly past it
        (50.0, "50.0"),
        (-1.0, "-1.0"),
        (1e-7, "1e-07"),
        (3.4e38, "3.4e+38"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
    ],
)
def test_float32_text(value: float, text: str) -> None:
    assert float32_text(float(np.float32(value))) == text


@pytest.mark.parametrize(
    ("rate", "ending"),
    [
        (0.1, "between 0.25 and 4, got 0.1"),
        (4.1, "between 0.25 and 4, got 4.1"),
        (-0.3, "a positive number, got -0.3"),
    ],
)
def test_speaking_rate_message(rate: float, ending: str) -> None:
    request = pb.SynthesizeRequest(text="Hi.", speaking_rate=rate)  # a float32 on the wire
    assert request.speaking_rate != rate  # what the message used to print
    with pytest.raises(InvalidArgument) as info:
        validate_options(request, VOICES)
    assert str(info.value).endswith(ending), str(info.value)


def test_through_the_gateway(synthesizer: synthesizer_pb2_grpc.SynthesizerStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        synthesizer.Synthesize(pb.SynthesizeRequest(text="Hi.", speaking_rate=0.1), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "speaking_rate must be between 0.25 and 4, got 0.1"
