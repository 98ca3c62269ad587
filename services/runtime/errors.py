"""Domain errors and their one mapping to gRPC status codes.

Stage and gateway code raise these; `grpc_status_for` (used by the runtime's servicer
wrapper) turns them into a precise status with a human message. Anything else becomes
INTERNAL without leaking details.
"""

from __future__ import annotations

import grpc


class VoxlineError(Exception):
    """Base class: an error with a gRPC status code and a message safe to show a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


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


def grpc_status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and caller-facing message for an exception."""
    if isinstance(exc, VoxlineError):
        return exc.code, str(exc)
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        # An upstream call failed and nobody translated it: keep its code, say where.
        return exc.code(), f"upstream call failed: {exc.details()}"  # type: ignore[attr-defined]
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})"
