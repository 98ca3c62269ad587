"""The gateway runs no model: it never imports torch (tensors on the wire decode with numpy
there, services/runtime/wire.py), so its image could drop torch and it starts fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_gateway_never_imports_torch() -> None:
    code = (
        "import sys, services.gateway.service; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_running_gateway_has_no_torch_loaded(stack) -> None:
    """The real gateway process, after serving requests, has no libtorch mapped."""
    import grpc
    from voxline.v1 import synthesizer_pb2 as pb
    from voxline.v1 import synthesizer_pb2_grpc

    with grpc.insecure_channel(stack.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        assert stub.Synthesize(pb.SynthesizeRequest(text="No torch here."), timeout=60).audio

    def mapped(service: str) -> str:
        return Path(f"/proc/{stack.procs[service].pid}/maps").read_text()

    assert "libtorch" not in mapped("gateway")
    assert "libtorch" in mapped("vocoder")  # the check can see torch where it is
