"""Where a streamed request's time goes: py-spy samples of every stack process vs in process.

`python -m bench.profile_tax [--requests N] [--out DIR]` starts the local stack as `make
serve` does, sends N streaming requests (bench.load TEXTS["sentence"], one at a time, over
one channel), and records each service with py-spy (idle threads left out)
while they run; then the same requests through `bench.load.InProcess` in a child process,
recorded the same way. Writes each profile as collapsed stacks (`DIR/<name>.txt`, for
flame-graph tools) and prints a JSON summary: CPU seconds per process and per category
(model compute, gRPC transport, protobuf and tensor copies, telemetry, logging, memory
trimming, Python threading/waits, other), the categories being the first match on the
sampled stack (CATEGORIES, most specific first).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from voxline.v1 import synthesizer_pb2, synthesizer_pb2_grpc

from bench.load import TEXTS
from services.cli.stack import LocalStack

#: Sampling rate (Hz): high enough for ~100 ms requests, low enough not to slow them much.
RATE_HZ = 250
#: (category, substrings of a frame, any of which puts a sample there), most specific first.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("memory trim", ("malloc_trim", "release_freed_memory")),
    ("telemetry", ("opentelemetry", "telemetry/")),
    ("logging", ("logging/__init__", "telemetry/logging")),
    (
        "protobuf / tensor copies",
        (
            "to_proto",
            "from_proto",
            "pcm_from_proto",
            "SerializeToString",
            "FromString",
            "_message",
            "protobuf",
        ),
    ),
    (
        "model compute",
        ("torch/nn/", "execute (services/", "libtorch", "at::", "mkl", "dnnl", "omp", "gomp"),
    ),
    (
        "gRPC transport",
        ("grpc/_channel", "grpc/_server", "cygrpc", "grpc_core", "libgrpc", "completion_queue"),
    ),
    ("threads / queues", ("threading.py", "queue.py")),
)


#: A sample whose innermost frame is one of these is a thread waiting, not computing (py-spy's
#: own idle detection does not work in these containers).
IDLE_LEAVES = (
    "Condition.wait (",
    "Event.wait (",
    "Queue.get (",
    "SimpleQueue.get",
    "_serve (grpc/_server.py",
    "Thread._wait_for_tstate_lock",
    "_ticker (",
    "select (",
    "sleep (",
)


def _category(stack: str) -> str:
    leaf = stack.rsplit(";", 1)[-1]
    if any(leaf.startswith(idle) or idle in leaf for idle in IDLE_LEAVES):
        return "idle"
    for name, needles in CATEGORIES:
        if any(n in stack for n in needles):
            return name
    return "other"


def _summarise(collapsed: Path) -> dict[str, float]:
    """CPU seconds by category from py-spy's collapsed stacks (`frames count` lines)."""
    seconds: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            seconds[_category(stack)] += int(count) / RATE_HZ
    idle = seconds.pop("idle", 0.0)
    total = sum(seconds.values())
    return {
        "busy_s": round(total, 3),
        **{k: round(v, 3) for k, v in seconds.most_common()},
        "idle_thread_s": round(idle, 3),
    }


def _record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--rate",
         str(RATE_HZ), "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _stop(recorders: list[subprocess.Popen[bytes]]) -> None:
    for r in recorders:
        r.send_signal(signal.SIGINT)
    for r in recorders:
        r.wait(60)


def profile_stack(requests: int, out: Path) -> dict[str, object]:
    with LocalStack(Path(tempfile.mkdtemp(prefix="voxline-profile-"))) as stack:
        channel = grpc.insecure_channel(stack.gateway)
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        request = synthesizer_pb2.SynthesizeRequest(text=TEXTS["sentence"])
        for _ in range(3):  # warm
            list(stub.SynthesizeStream(request))
        names = list(stack.procs)
        recorders = [_record(p.pid, out / f"{name}.txt") for name, p in stack.procs.items()]
        time.sleep(1.0)  # py-spy attached
        t0 = time.monotonic()
        for _ in range(requests):
            list(stub.SynthesizeStream(request))
        wall = time.monotonic() - t0
        _stop(recorders)
        channel.close()
    return {
        "wall_s": round(wall, 3),
        "processes": {name: _summarise(out / f"{name}.txt") for name in names},
    }


_IN_PROCESS = """
import sys, time
from bench.load import InProcess
p = InProcess(threads=2)
for _ in range(3):
    p.stream_once("sentence")
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
t0 = time.monotonic()
for _ in range({requests}):
    p.stream_once("sentence")
sys.stdout.write(f"{{time.monotonic() - t0}}\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def profile_in_process(requests: int, out: Path) -> dict[str, object]:
    child = subprocess.Popen(
        [sys.executable, "-c", _IN_PROCESS.format(requests=requests)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    recorder = _record(child.pid, out / "in_process.txt")
    time.sleep(1.0)
    child.stdin.write("go\n")
    child.stdin.flush()
    wall = float(child.stdout.readline())
    _stop([recorder])
    child.stdin.write("end\n")
    child.stdin.flush()
    child.wait(60)
    return {
        "wall_s": round(wall, 3),
        "processes": {"in_process": _summarise(out / "in_process.txt")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--out", default="bench/results/profile")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "requests": args.requests,
        "stack": profile_stack(args.requests, out),
        "in_process": profile_in_process(args.requests, out),
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
