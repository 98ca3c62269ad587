"""Hostile callers against a default local stack: does any of them stall the gateway?

`python -m bench.abuse [--out FILE]` starts the stack as `voxline serve` does (default flags)
and runs, one after another, the callers of docs/reliability.md ("Callers that stall"):
streams that never send their config, streams that send a config and then nothing, 5,000
characters of text built to cost more than its length, and a caller that stops reading. For
each it records how the hostile calls ended (status, seconds) and what a normal caller saw
meanwhile (time to first audio of a 9-word stream, a health check's latency). JSON out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.stack import LocalStack

NORMAL_TEXT = "The quick brown fox jumps over the lazy sleeping dog."
#: 5,000-character texts, each built to make one text path work hard.
HOSTILE_TEXTS = {
    "expanding symbols": ("7% & @ 3°F ² 5km " * 300)[:5000],
    "percent signs": "%" * 5000,
    "comma-grouped numbers": ("1,234,567," * 500)[:5000],
    "digit run": ("1234567890" * 500)[:5000],
    "punctuation run": ("!?.!?.." * 715)[:5000],
    "short sentences": ("Hi. " * 1250)[:5000],
}


def _status(fn: Callable[[], Any]) -> tuple[str, float]:
    start = time.monotonic()
    try:
        fn()
        code = "OK"
    except grpc.RpcError as err:
        code = err.code().name
    return code, round(time.monotonic() - start, 3)


def _drain(call: Any) -> None:
    for _ in call:
        pass


class Probe:
    """A normal caller and the health check, measured while hostile calls run."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    def ttfa(self) -> tuple[str, float | None]:
        start = time.monotonic()
        try:
            stream = self._stub.SynthesizeStream(pb.SynthesizeRequest(text=NORMAL_TEXT), timeout=60)
            next(stream)
            first = time.monotonic() - start
            _drain(stream)
            return "OK", round(first, 3)
        except grpc.RpcError as err:
            return err.code().name, None

    def health_s(self) -> float:
        start = time.monotonic()
        self._health.Check(health_pb2.HealthCheckRequest(), timeout=60)
        return round(time.monotonic() - start, 3)

    def until_served(self, limit_s: float = 60.0) -> float | None:
        """Seconds until a normal request is admitted and completes (None: never)."""
        start = time.monotonic()
        while time.monotonic() - start < limit_s:
            code, _ = self.ttfa()
            if code == "OK":
                return round(time.monotonic() - start, 3)
            time.sleep(0.25)
        return None


def _silent_then(first: list[Any], stop: threading.Event) -> Iterator[Any]:
    yield from first
    stop.wait(300)


def _in_threads(calls: list[Callable[[], tuple[str, float]]]) -> list[tuple[str, float]]:
    results: list[tuple[str, float]] = [("", 0.0)] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _summary(results: list[tuple[str, float]]) -> dict[str, Any]:
    codes: dict[str, int] = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    return {"statuses": codes, "longest_s": max(s for _, s in results)}


def idle_streams(channel: grpc.Channel, probe: Probe, config: bool, n: int = 24) -> dict:
    """`n` text streams that send nothing (or only their config); the normal caller meanwhile."""
    stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
    stop = threading.Event()
    first = [pb.SynthesizeTextStreamRequest(config=pb.SynthesizeRequest())] if config else []
    calls = [
        (lambda: _status(lambda: _drain(stub.SynthesizeTextStream(_silent_then(first, stop)))))
        for _ in range(n)
    ]
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(r=_in_threads(calls)))
    runner.start()
    time.sleep(1.0)
    during = {"health_s": probe.health_s(), "normal_served_after_s": probe.until_served()}
    runner.join()
    stop.set()
    return {"hostile": _summary(box["r"]), "normal_caller": during}


def hostile_texts(channel: grpc.Channel, probe: Probe) -> dict:
    stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
    out = {}
    for name, text in HOSTILE_TEXTS.items():
        box: dict[str, Any] = {}

        def hostile(text: str = text, box: dict[str, Any] = box) -> None:
            stream = stub.SynthesizeStream(pb.SynthesizeRequest(text=text), timeout=120)
            box["first"] = _status(lambda: next(stream))
            box["rest"] = _status(lambda: _drain(stream))

        runner = threading.Thread(target=hostile)
        runner.start()
        time.sleep(0.2)
        ttfas = [probe.ttfa()[1] for _ in range(3)]
        runner.join()
        out[name] = {
            "first_answer": box["first"],
            "whole": box["rest"],
            "normal_ttfa_s": [t for t in ttfas if t is not None],
        }
    return out


def stalled_reader(channel: grpc.Channel, probe: Probe, address: str) -> dict:
    long_text = " ".join([NORMAL_TEXT] * 80)
    with grpc.insecure_channel(address, [("grpc.http2.bdp_probe", 0)]) as stalled_channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(stalled_channel)
        streams = [stub.SynthesizeStream(pb.SynthesizeRequest(text=long_text)) for _ in range(2)]
        for s in streams:
            next(s)
        served = probe.until_served(120.0)
        ends = [_status(lambda s=s: _drain(s)) for s in streams]
    return {"normal_served_after_s": served, "stalled": ends}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/abuse.json")
    args = parser.parse_args()
    with LocalStack(Path(tempfile.mkdtemp(prefix="voxline-abuse-"))) as stack:
        channel = grpc.insecure_channel(stack.gateway)
        probe = Probe(channel)
        baseline = [probe.ttfa()[1] for _ in range(5)]
        report = {
            "baseline_ttfa_s": statistics.median(t for t in baseline if t is not None),
            "no_config": idle_streams(channel, probe, config=False),
            "config_then_silence": idle_streams(channel, probe, config=True),
            "hostile_texts": hostile_texts(channel, probe),
            "stalled_readers": stalled_reader(channel, probe, stack.gateway),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
