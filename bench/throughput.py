"""Throughput at N concurrent streams: the stack against the same stages in one process.

`python -m bench.throughput [N ...]` (default 4 8): N threads each stream the ~20 s paragraph
(bench.load TEXTS["paragraph"]) twice, through a local stack (gateway `--max-active 8`, one
channel) and through `bench.load.InProcess` (2 torch threads, shared by the threads), the two
alternated and repeated; prints x-real-time (audio seconds per wall second) and the ratio.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from bench.load import TEXTS, InProcess
from services.cli.stack import LocalStack

ROUNDS = 2
REPEATS = 2


def x_real_time(streams: int, once: Callable[[], float]) -> float:
    """Audio seconds per wall second with `streams` threads each calling `once` ROUNDS times."""
    audio = [0.0] * streams

    def worker(i: int) -> None:
        for _ in range(ROUNDS):
            audio[i] += once()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(audio) / (time.monotonic() - t0)


def main(levels: list[int]) -> int:
    text = TEXTS["paragraph"]
    args = {"gateway": ["--max-active", str(max(levels))]}
    with LocalStack(Path(tempfile.mkdtemp(prefix="voxline-xrt-")), extra_args=args) as stack:
        stub = synthesizer_pb2_grpc.SynthesizerStub(grpc.insecure_channel(stack.gateway))
        inproc = InProcess(threads=2)

        def stack_once() -> float:
            request = pb.SynthesizeRequest(text=text)
            samples = sum(len(m.audio) // 2 for m in stub.SynthesizeStream(request))
            return samples / inproc.sample_rate

        def inproc_once() -> float:
            return sum(pcm.numel() for pcm in inproc.audio(text)) / inproc.sample_rate

        variants = {"stack": stack_once, "in_process": inproc_once}
        for once in variants.values():
            once()  # warm
        results: dict[tuple[str, int], list[float]] = {}
        for repeat in range(REPEATS):
            for n in levels:
                order = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
                for name in order:
                    results.setdefault((name, n), []).append(x_real_time(n, variants[name]))
    for n in levels:
        stack_x = statistics.median(results[("stack", n)])
        inproc_x = statistics.median(results[("in_process", n)])
        print(
            f"{n} streams: stack {stack_x:.1f}x real time, in process {inproc_x:.1f}x, "
            f"ratio {stack_x / inproc_x:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main([int(a) for a in sys.argv[1:]] or [4, 8]))
