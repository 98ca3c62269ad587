"""Requests that do not decode get INVALID_ARGUMENT, not INTERNAL.

grpc decodes a request before the handler runs; when protobuf refuses the bytes (a string
field holding invalid UTF-8, a truncated message) grpc answers ``INTERNAL "Exception
deserializing request!"`` and logs a traceback at ERROR -- a server fault for what is the
caller's mistake. Here every method's deserializer is wrapped so that a refused message
becomes an :class:`Undecodable` value, which the servicer wrapper (``rpc_method``) turns into
``INVALID_ARGUMENT`` with a human message. The generated registration code is used as it is:
:class:`TolerantServer` wraps the handlers it registers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from services.runtime.errors import InvalidArgument


@dataclass(frozen=True)
class Undecodable:
    """A request message protobuf refused to decode (the bytes themselves are not kept)."""

    method: str

    def error(self) -> InvalidArgument:
        """The caller-facing error for this message."""
        return InvalidArgument(
            f"the {self.method} request could not be decoded: a text field is not valid "
            "UTF-8, or the message is malformed or truncated"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception:  # protobuf's DecodeError, or anything else a parser raises
            return Undecodable(method)

    return deserialize


def _wrap(handler: grpc.RpcMethodHandler | None, method: str) -> grpc.RpcMethodHandler | None:
    if handler is None or not hasattr(handler, "_replace"):
        return handler
    name = method.rsplit("/", 1)[-1]
    return handler._replace(request_deserializer=_tolerant(handler.request_deserializer, name))


class _TolerantGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return _wrap(self._inner.service(handler_call_details), handler_call_details.method)


class TolerantServer:
    """A view of a ``grpc.Server`` whose registered handlers decode tolerantly; pass it to
    generated ``add_*Servicer_to_server`` functions. Other attributes go to the server."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        """Register ``handlers``, each wrapped."""
        self._server.add_generic_rpc_handlers(tuple(_TolerantGenericHandler(h) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        """Register per-method ``handlers`` of ``service``, each wrapped."""
        wrapped = {name: _wrap(h, f"/{service}/{name}") for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def checked(request: Any) -> Any:
    """``request`` itself, or for a request stream an iterator that checks every message;
    raises :class:`InvalidArgument` for an undecodable message."""
    if isinstance(request, Undecodable):
        raise request.error()
    if hasattr(request, "DESCRIPTOR"):  # a decoded protobuf message
        return request
    return _checked_stream(request)


def _checked_stream(messages: Iterator[Any]) -> Iterator[Any]:
    for message in messages:
        if isinstance(message, Undecodable):
            raise message.error()
        yield message
