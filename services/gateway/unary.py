"""A unary answer's size, known before the work, its limit, and whether it was delivered.

A `Synthesize` answer is one gRPC message holding the whole WAV, and gRPC clients refuse a
message above their receive limit (4 MiB unless they configure it: "Received message larger
than max") -- after the gateway has done all the work. The size is known early: the frontend
plans every sentence's frames first, and the answer follows exactly from them (frames x hop
native samples, resampled to the output rate, 2 bytes each, the WAV header, the message's
other fields). So an answer that would not fit `--max-unary-bytes` is refused with
INVALID_ARGUMENT, pointing to streaming, before the acoustic and vocoder stages run
(`UnaryAnswer.check`, called by `Pipeline.synthesize`).

gRPC sends a unary answer after the handler has returned, so whether the caller took it is
only known from the call's termination callback (`on_delivery`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from voxline.v1 import synthesizer_pb2

from services.runtime.errors import InvalidArgument
from services.runtime.wav import wav_size

MiB = 1024 * 1024
#: gRPC's default receive limit of a client (`grpc.max_receive_message_length`): the largest
#: answer a stock client accepts. `--max-unary-bytes` changes it.
DEFAULT_MAX_UNARY_BYTES = 4 * MiB
#: Field 1 (`audio`), length-delimited: its tag is one byte.
_AUDIO_TAG_BYTES = 1


def output_samples(native_samples: int, native_rate: int, sample_rate: int) -> int:
    """How many samples `services.gateway.audio.resample` makes of `native_samples`: soxr's
    output length, ilen / (in_rate / out_rate) rounded (tests/test_unary_limits.py checks it
    against soxr)."""
    if sample_rate == native_rate:
        return native_samples
    return int(native_samples / (native_rate / sample_rate) + 0.5)


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def size_text(size: int) -> str:
    """A byte count for a message: `5.86 MiB (6,141,538 bytes)`."""
    return f"{size / MiB:.3g} MiB ({size:,} bytes)"


@dataclass(frozen=True)
class UnaryAnswer:
    """A unary answer in the making: everything but its samples."""

    native_rate: int
    hop_length: int
    sample_rate: int
    request_id: str

    def samples(self, frames: int) -> int:
        """Output samples of `frames` frames of the voice's features."""
        return output_samples(frames * self.hop_length, self.native_rate, self.sample_rate)

    def message_bytes(self, frames: int) -> int:
        """The serialized size of the SynthesizeResponse that `frames` frames make (what a
        client's receive limit is compared with)."""
        samples = self.samples(frames)
        audio = wav_size(samples)
        rest = synthesizer_pb2.SynthesizeResponse(
            sample_rate_hz=self.sample_rate,
            duration_seconds=samples / self.sample_rate,
            encoding=synthesizer_pb2.AUDIO_ENCODING_LINEAR16,
            request_id=self.request_id,
        ).ByteSize()
        return rest + _AUDIO_TAG_BYTES + _varint_bytes(audio) + audio

    def check(self, frames: int, max_bytes: int) -> None:
        """InvalidArgument when the answer for `frames` frames would exceed `max_bytes`."""
        size = self.message_bytes(frames)
        if size > max_bytes:
            raise InvalidArgument(
                f"the answer would be {size_text(size)}, over the {size_text(max_bytes)} "
                "limit of a unary answer; use SynthesizeStream (voxline say streams), or send "
                "less text or ask for a lower sample_rate_hz"
            )


def delivered(context: grpc.ServicerContext) -> bool | None:
    """Once the call has ended (in an `add_callback` callback): whether gRPC completed it,
    False when it ended cancelled (the caller refused the answer -- over its receive limit --,
    went away, or its deadline passed); None if grpcio's call state cannot be read.

    grpcio has no public API for this: the server context's `_state.client` ("closed" or
    "cancelled") is read, and the OpenTelemetry wrapper passes the attribute through.
    Best effort: an answer small enough for the transport to take in whole (its flow-control
    window, 64 KiB to a few hundred KiB) counts as sent even if the client then refuses it.
    """
    client = getattr(getattr(context, "_state", None), "client", None)
    if client == "cancelled":
        return False
    if client == "closed":
        return True
    return None


def on_delivery(context: grpc.ServicerContext, callback: Callable[[bool], None]) -> None:
    """Call `callback(delivered)` when the call has ended (at once if it already has), in the
    trace context current now (its log lines keep the request's trace id). `delivered` is
    False only when the call is known to have failed (`delivered`)."""
    trace_context = otel_context.get_current()

    def ended() -> None:
        token = otel_context.attach(trace_context)
        try:
            callback(delivered(context) is not False)
        finally:
            otel_context.detach(token)

    if not context.add_callback(ended):  # the call is already over
        ended()
