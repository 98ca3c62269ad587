"""Conversion between `voxline.v1.Tensor` messages and torch tensors.

Tensors travel as dtype + shape + raw little-endian bytes (see protos/voxline/v1/tensor.proto);
decoding and its checks are `services.runtime.wire`'s (numpy), shared with processes that run
no model. Conversion is a single buffer copy, never a per-element loop.
"""

from __future__ import annotations

import torch
from voxline.v1 import tensor_pb2

from services.runtime.wire import array_from_proto

_TO_PROTO: dict[torch.dtype, int] = {
    torch.float32: tensor_pb2.DTYPE_FLOAT32,
    torch.float16: tensor_pb2.DTYPE_FLOAT16,
    torch.bfloat16: tensor_pb2.DTYPE_BFLOAT16,
    torch.int64: tensor_pb2.DTYPE_INT64,
    torch.int32: tensor_pb2.DTYPE_INT32,
    torch.int16: tensor_pb2.DTYPE_INT16,
}


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
    wire = None if dtypes is None else tuple(_TO_PROTO[d] for d in dtypes)
    tensor = torch.from_numpy(array_from_proto(message, name=name, ndim=ndim, dtypes=wire))
    return tensor.view(torch.bfloat16) if message.dtype == tensor_pb2.DTYPE_BFLOAT16 else tensor
