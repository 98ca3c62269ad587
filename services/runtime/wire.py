"""`voxline.v1.Tensor` messages as numpy arrays: the wire format, checked, without torch.

Tensors travel as dtype + shape + raw little-endian bytes (protos/voxline/v1/tensor.proto).
Where no model runs (the gateway) they decode here, so that process never imports torch;
`services.runtime.tensors` builds torch tensors on top of the same checks.
"""

from __future__ import annotations

import sys

import numpy as np
from voxline.v1 import tensor_pb2

from services.runtime.errors import InvalidArgument

#: Wire dtype -> (name, numpy dtype of its raw elements). bfloat16 has no numpy dtype: its
#: bits travel and decode as int16 (torch reinterprets them).
WIRE_DTYPES: dict[int, tuple[str, np.dtype]] = {
    tensor_pb2.DTYPE_FLOAT32: ("float32", np.dtype("<f4")),
    tensor_pb2.DTYPE_FLOAT16: ("float16", np.dtype("<f2")),
    tensor_pb2.DTYPE_BFLOAT16: ("bfloat16", np.dtype("<i2")),
    tensor_pb2.DTYPE_INT64: ("int64", np.dtype("<i8")),
    tensor_pb2.DTYPE_INT32: ("int32", np.dtype("<i4")),
    tensor_pb2.DTYPE_INT16: ("int16", np.dtype("<i2")),
}

if sys.byteorder != "little":  # pragma: no cover - every platform we run on is little-endian
    raise ImportError("voxline tensors assume a little-endian host")


def array_from_proto(
    message: tensor_pb2.Tensor,
    *,
    name: str,
    ndim: int | None = None,
    dtypes: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Decode a Tensor message into a writable array of its raw elements, validating it;
    errors are `InvalidArgument` naming the field `name`. `dtypes`: accepted wire dtypes."""
    entry = WIRE_DTYPES.get(message.dtype)
    if entry is None:
        raise InvalidArgument(f"{name}: unsupported or missing dtype ({message.dtype})")
    dtype_name, raw = entry
    if dtypes is not None and message.dtype not in dtypes:
        allowed = ", ".join(WIRE_DTYPES[d][0] for d in dtypes)
        raise InvalidArgument(f"{name}: dtype {dtype_name} not accepted (expected {allowed})")
    shape = tuple(int(d) for d in message.shape)
    if ndim is not None and len(shape) != ndim:
        raise InvalidArgument(f"{name}: expected {ndim} dimensions, got shape {list(shape)}")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{name}: negative dimension in shape {list(shape)}")
    numel = 1
    for d in shape:
        numel *= d
    if numel * raw.itemsize != len(message.data):
        raise InvalidArgument(
            f"{name}: shape {list(shape)} needs {numel * raw.itemsize} bytes, "
            f"got {len(message.data)}"
        )
    # bytearray: a writable buffer (one copy), which torch.from_numpy needs.
    return np.frombuffer(bytearray(message.data), dtype=raw).reshape(shape)


def pcm_from_proto(message: tensor_pb2.Tensor, *, name: str = "audio") -> np.ndarray:
    """A 1-D int16 PCM Tensor message as a numpy array."""
    return array_from_proto(message, name=name, ndim=1, dtypes=(tensor_pb2.DTYPE_INT16,))
