"""A/B of two builds in one run: `python bench/ab.py DIR_A DIR_B [N]` (run it from `/`).

DIR_A and DIR_B are checkouts (e.g. `git worktree add /tmp/a <before>` and one with the
change); each stack's services import from their own checkout (PYTHONPATH, started from
`/`). Streams a 3-sentence paragraph N times (default 24) through stack A, stack B and the
in-process composition (`bench.load.InProcess`, from DIR_A), interleaved, over one reused
channel per stack, and prints TTFA and end-to-end p50/p95 and their ratios. `AB_EXTRA` (JSON,
e.g. '{"B": {"vocoder": ["--torch-threads", "1"]}}') adds service flags per stack.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    dir_a, dir_b = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 24
    extra = json.loads(os.environ.get("AB_EXTRA", "{}"))
    sys.path.insert(0, dir_a)
    import grpc
    from voxline.v1 import synthesizer_pb2 as pb
    from voxline.v1 import synthesizer_pb2_grpc

    from bench.load import TEXTS, InProcess
    from services.cli.stack import LocalStack

    text = " ".join(
        [TEXTS["sentence"], TEXTS["twelve_words"], "A third sentence closes this paragraph."]
    )

    def stream(stub: synthesizer_pb2_grpc.SynthesizerStub) -> tuple[float, float]:
        t0, first = time.monotonic(), None
        for message in stub.SynthesizeStream(pb.SynthesizeRequest(text=text, seed=1)):
            if first is None and message.audio:
                first = time.monotonic() - t0
        return first or 0.0, time.monotonic() - t0

    stacks = {
        name: LocalStack(
            Path(tempfile.mkdtemp(prefix=f"ab{name}")),
            env={**os.environ, "PYTHONPATH": root},
            extra_args=extra.get(name, {}),
        ).start()
        for name, root in (("A", dir_a), ("B", dir_b))
    }
    stubs = {
        name: synthesizer_pb2_grpc.SynthesizerStub(grpc.insecure_channel(stack.gateway))
        for name, stack in stacks.items()
    }
    inproc = InProcess(threads=2)

    def in_process() -> tuple[float, float]:
        t0, first = time.monotonic(), None
        for pcm in inproc.audio(text):
            if first is None and pcm.numel():
                first = time.monotonic() - t0
        return first or 0.0, time.monotonic() - t0

    runs: dict[str, Callable[[], tuple[float, float]]] = {
        "A": lambda: stream(stubs["A"]),
        "B": lambda: stream(stubs["B"]),
        "in_process": in_process,
    }
    for run in runs.values():  # warm
        for _ in range(3):
            run()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    order = list(runs)
    for i in range(n):
        for name in order if i % 2 == 0 else order[::-1]:
            results[name].append(runs[name]())
    for stack in stacks.values():
        stack.stop()
    out = {}
    for name, pairs in results.items():
        ttfa, e2e = [p[0] * 1000 for p in pairs], [p[1] * 1000 for p in pairs]
        out[name] = {
            "ttfa_p50": statistics.median(ttfa), "ttfa_p95": _pct(ttfa, 0.95),
            "e2e_p50": statistics.median(e2e), "e2e_p95": _pct(e2e, 0.95),
        }  # fmt: skip
        print(name, {k: round(v, 1) for k, v in out[name].items()})
    base = out["in_process"]
    for name in ("A", "B"):
        ratio_t = out[name]["ttfa_p50"] / base["ttfa_p50"]
        ratio_e = out[name]["e2e_p50"] / base["e2e_p50"]
        print(f"{name}/in-process: ttfa {ratio_t:.2f} e2e {ratio_e:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
