"""Domain errors and their one mapping to gRPC status codes.

Stage and gateway code raise these; `grpc_status_for` (used by the runtime's servicer
wrapper) turns them into a precise status with a human message. Anything else becomes
INTERNAL without leaking details.
"""

from __future__ import annotations

import sys

import grpc


class VoxlineError(Exception):
    """Base class: an error with a gRPC status code and a message safe to show a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: Trailing metadata sent with the status (e.g. a retry hint).
    trailers: tuple[tuple[str, str], ...] = ()


class InvalidArgument(VoxlineError):
    """The request itself is wrong; retrying it unchanged will fail again."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(VoxlineError):
    """The server is at a limit (queue full, too many concurrent requests)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(VoxlineError):
    """A dependency or the model is not ready; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(VoxlineError):
    """The caller's deadline passed before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(VoxlineError):
    """The caller went away."""

    code = grpc.StatusCode.CANCELLED


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is torch's CUDA out-of-memory error (torch.cuda.OutOfMemoryError)."""
    # Not importing torch here: a process that never imported it cannot have raised it.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def grpc_status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and caller-facing message for an exception."""
    if isinstance(exc, VoxlineError):
        return exc.code, str(exc)
    if is_out_of_memory(exc):
        # The model scheduler says which stage and batch (ResourceExhausted); this is for
        # model work outside it. Transient: the memory is free again once the work failed.
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "ran out of GPU memory; retry"
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        # An upstream call failed and nobody translated it: keep its code, say where.
        return exc.code(), f"upstream call failed: {exc.details()}"  # type: ignore[attr-defined]
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})"
