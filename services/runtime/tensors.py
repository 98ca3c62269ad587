"""Conversion between `voxline.v1.Tensor` messages and torch tensors.

Tensors travel as dtype + shape + raw little-endian bytes (see protos/voxline/v1/tensor.proto).
Conversion is a single buffer copy, never a per-element loop.
"""

from __future__ import annotations

import sys

import torch
from voxline.v1 import tensor_pb2

from services.runtime.errors import InvalidArgument

_TO_PROTO: dict[torch.dtype, int] = {
    torch.float32: tensor_pb2.DTYPE_FLOAT32,
    torch.float16: tensor_pb2.DTYPE_FLOAT16,
    torch.bfloat16: tensor_pb2.DTYPE_BFLOAT16,
    torch.int64: tensor_pb2.DTYPE_INT64,
    torch.int32: tensor_pb2.DTYPE_INT32,
    torch.int16: tensor_pb2.DTYPE_INT16,
}
_FROM_PROTO: dict[int, torch.dtype] = {v: k for k, v in _TO_PROTO.items()}

if sys.byteorder != "little":  # pragma: no cover - every platform we run on is little-endian
    raise ImportError("voxline tensors assume a little-endian host")


def to_proto(tensor: torch.Tensor) -> tensor_pb2.Tensor:
    """Serialise a tensor (any device) into a Tensor message."""
    if tensor.dtype not in _TO_PROTO:
        raise TypeError(f"unsupported tensor dtype for the wire: {tensor.dtype}")
    t = tensor.detach().to("cpu").contiguous()
    # bfloat16 has no numpy equivalent: reinterpret its bits as int16 to get the raw bytes.
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    return tensor_pb2.Tensor(
        dtype=_TO_PROTO[t.dtype], shape=list(t.shape), data=raw.numpy().tobytes()
    )


def from_proto(
    message: tensor_pb2.Tensor,
    *,
    name: str,
    ndim: int | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
) -> torch.Tensor:
    """Deserialise a Tensor message, validating it; errors are `InvalidArgument`.

    `name` appears in error messages so callers learn which field was malformed.
    """
    dtype = _FROM_PROTO.get(message.dtype)
    if dtype is None:
        raise InvalidArgument(f"{name}: unsupported or missing dtype ({message.dtype})")
    if dtypes is not None and dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise InvalidArgument(
            f"{name}: dtype {str(dtype).removeprefix('torch.')} not accepted (expected {allowed})"
        )
    shape = tuple(int(d) for d in message.shape)
    if ndim is not None and len(shape) != ndim:
        raise InvalidArgument(f"{name}: expected {ndim} dimensions, got shape {list(shape)}")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{name}: negative dimension in shape {list(shape)}")
    numel = 1
    for d in shape:
        numel *= d
    itemsize = torch.empty((), dtype=dtype).element_size()
    if numel * itemsize != len(message.data):
        raise InvalidArgument(
            f"{name}: shape {list(shape)} needs {numel * itemsize} bytes, got {len(message.data)}"
        )
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    # bytearray gives torch a writable buffer (frombuffer warns on read-only bytes).
    wire_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
    flat = torch.frombuffer(bytearray(message.data), dtype=wire_dtype)
    if dtype == torch.bfloat16:
        flat = flat.view(torch.bfloat16)
    return flat.reshape(shape)
