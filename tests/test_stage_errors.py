"""The gateway's translation of stage failures: callers get a status and a generic message;
pod addresses and transport details stay in the gateway's log."""

from __future__ import annotations

import logging

import grpc
import pytest

from services.gateway.stages import translate
from services.runtime.errors import InvalidArgument, Unavailable, VoxlineError

ADDRESS = "ipv4:10.42.0.17:50051"


class _Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "kind"),
    [(grpc.StatusCode.UNAVAILABLE, Unavailable), (grpc.StatusCode.INTERNAL, VoxlineError)],
)
def test_transport_details_go_to_the_log_not_the_caller(
    code: grpc.StatusCode, kind: type, caplog: pytest.LogCaptureFixture
) -> None:
    details = f"failed to connect to all addresses; last error: {ADDRESS}: Connection refused"
    with caplog.at_level(logging.WARNING, logger="voxline.gateway"):
        error = translate("vocoder", "dns:///vocoder:50051", _Failure(code, details))
    assert isinstance(error, kind) and str(error).startswith("vocoder stage")
    assert ADDRESS not in str(error) and "dns:///" not in str(error)
    (record,) = caplog.records
    assert record.details == details and record.target == "dns:///vocoder:50051"  # type: ignore[attr-defined]


def test_a_stages_own_message_reaches_the_caller() -> None:
    error = translate(
        "acoustic",
        "dns:///acoustic:50051",
        _Failure(grpc.StatusCode.INVALID_ARGUMENT, "durations sum to 0 frames"),
    )
    assert (
        isinstance(error, InvalidArgument) and str(error) == "acoustic: durations sum to 0 frames"
    )
