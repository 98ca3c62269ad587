"""`rpc_method`: how every servicer method of every Voxline service is served.

Layering (docs/telemetry.md, "Who records what"): the telemetry interceptor
(``telemetry.grpc.RpcMetricsServerInterceptor``) owns the RPC's span status, its
``error.type``, ``rpc.server.call.duration`` and the stage's request counts
(``voxline.stage.requests``, ``voxline.stage.active_requests``), for every RPC including
refusals by other interceptors. `rpc_method` records none of them: it *maps errors* (an
exception becomes ``context.abort(precise code, human message)``, which the interceptor then
reads back from the context), logs the failure, and sets up the call's per-RPC context
(phases, the request id on the server span: business attributes only).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from services.runtime.decoding import checked
from services.runtime.errors import VoxlineError, grpc_status_for
from services.runtime.phases import rpc_context, server_span
from telemetry import names

if TYPE_CHECKING:
    from services.runtime.stage_runtime import StageRuntime

log = logging.getLogger("voxline.runtime")

F = TypeVar("F", bound=Callable[..., Any])


def note_request_id(message: Any) -> bool:
    """Put the request id a response message carries onto the server span
    (``voxline.request.id``, what `voxline trace REQUEST_ID` looks for); True once done.

    From the *response*: it is the id the service accepted (the caller's, validated, or the
    one the gateway made up), never an unchecked string from the request. Responses without
    a ``request_id`` field (the stages') leave the span alone.
    """
    request_id = getattr(message, "request_id", None)
    if not isinstance(request_id, str) or not request_id:
        return False
    server_span.get().set_attribute(names.ATTR_REQUEST_ID, request_id)
    return True


def rpc_method(fn: F) -> F:
    """Wrap a servicer method: errors become precise statuses; the call gets its context.

    Exceptions become a gRPC status with the exception's own message (written for humans,
    never containing request text); unexpected ones become INTERNAL and are logged with their
    traceback. The call runs in its per-RPC phase context (:func:`rpc_context`), and the
    request id of the response goes onto the server span (:func:`note_request_id`).
    Telemetry of the outcome -- span status, request counts, durations, the trace id sent to
    the caller -- is the telemetry interceptor's (module docstring), never this wrapper's.
    Works for unary and streaming methods.
    The servicer exposes its `StageRuntime` as `self.runtime`.
    """
    method = fn.__name__
    streaming = inspect.isgeneratorfunction(fn)

    def _fail(context: grpc.ServicerContext, exc: BaseException) -> None:
        code, message = grpc_status_for(exc)
        # Structured too: `voxline trace` finds the newest request's trace in the gateway's log.
        fields = {names.ATTR_RPC_METHOD: method, "code": code.name}
        if code == grpc.StatusCode.INTERNAL:
            log.exception("unhandled error in %s", fn.__qualname__, extra=fields)
        else:
            log.info("%s -> %s: %s", method, code.name, message, extra=fields)
        if isinstance(exc, VoxlineError) and exc.trailers:
            context.set_trailing_metadata(exc.trailers)
        context.abort(code, message)

    def _context(servicer: Any) -> AbstractContextManager[Any]:
        runtime: StageRuntime = servicer.runtime
        return rpc_context(method, runtime.config.service, streaming=streaming)

    if streaming:

        @functools.wraps(fn)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with _context(self):
                messages: Generator[Any, None, None] | None = None
                try:
                    messages = fn(self, checked(request), context)
                    noted = False
                    for message in messages:
                        noted = noted or note_request_id(message)
                        yield message
                except Exception as exc:
                    _fail(context, exc)
                finally:
                    # What `yield from` did: a closed stream closes the handler's generator
                    # now (its slots, spans and upstream calls), not when it is collected.
                    if messages is not None:
                        messages.close()

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _context(self):
            try:
                response = fn(self, checked(request), context)
                note_request_id(response)
                return response
            except Exception as exc:
                _fail(context, exc)

    return unary_wrapper  # type: ignore[return-value]
