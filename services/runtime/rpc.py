"""`rpc_method`: how every servicer method of every Voxline service is served."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from services.runtime.decoding import checked
from services.runtime.errors import VoxlineError, grpc_status_for
from services.runtime.phases import rpc_context, server_span
from telemetry.grpc import mark_span_error

if TYPE_CHECKING:
    from services.runtime.stage_runtime import StageRuntime

log = logging.getLogger("voxline.runtime")

F = TypeVar("F", bound=Callable[..., Any])


def rpc_method(fn: F) -> F:
    """Wrap a servicer method: errors become precise statuses, and it is measured.

    Exceptions become a gRPC status with the exception's own message (written for humans,
    never containing request text); unexpected ones become INTERNAL and are logged with their
    traceback. Every call is counted by outcome and status code, counted as active while it
    runs, and a non-OK outcome marks the server span ERROR with the status code (the gRPC
    instrumentation leaves several codes UNSET). Works for unary and streaming methods.
    The servicer exposes its `StageRuntime` as `self.runtime`.
    """
    method = fn.__name__

    def _fail(context: grpc.ServicerContext, exc: BaseException, tracker: Any) -> None:
        code, message = grpc_status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("unhandled error in %s", fn.__qualname__)
        else:
            log.info("%s -> %s: %s", method, code.name, message)
        tracker.set_code(code)
        mark_span_error(server_span.get(), code, message)
        if isinstance(exc, VoxlineError) and exc.trailers:
            context.set_trailing_metadata(exc.trailers)
        context.abort(code, message)

    streaming = inspect.isgeneratorfunction(fn)

    @contextmanager
    def _measured(servicer: Any) -> Iterator[Any]:
        runtime: StageRuntime = servicer.runtime
        with (
            rpc_context(method, runtime.config.service, streaming=streaming),
            runtime.metrics.track_request(method) as tracker,
        ):
            yield tracker

    if streaming:

        @functools.wraps(fn)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with _measured(self) as tracker:
                try:
                    yield from fn(self, checked(request), context)
                except GeneratorExit:
                    tracker.set_code(grpc.StatusCode.CANCELLED)
                    raise
                except Exception as exc:
                    _fail(context, exc, tracker)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _measured(self) as tracker:
            try:
                return fn(self, checked(request), context)
            except Exception as exc:
                _fail(context, exc, tracker)

    return unary_wrapper  # type: ignore[return-value]
