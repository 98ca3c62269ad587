"""Voxline benchmark: latency and throughput of the real local stack, as JSON.

Every comparison is measured in one run, interleaved, on the same machine, and reported as
medians and p95 (machines here are noisy; never compare numbers across runs):

- unary vs streaming: end-to-end latency, time-to-first-audio (TTFA), real-time factor;
- telemetry cost: the same requests against a stack with telemetry on (OTLP export to a
  local receiver) and one with `OTEL_SDK_DISABLED=true`, alternated request by request;
- concurrency: throughput (audio seconds per wall second) at 1 and N concurrent streams.

Usage: `make bench` (or `python -m bench.run --requests 8 --out bench/results/latest.json`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from services.cli.client import SynthesisResult, synthesize
from services.cli.stack import LocalStack

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech should start quickly, even when the sentence is long.",
    "On March 3rd, 2026, the invoice came to $1,234.56.",
    "Short one.",
]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": _pct(values, 0.95),
        "min": min(values),
        "max": max(values),
    }


def _run(address: str, text: str, stream: bool) -> SynthesisResult:
    return synthesize(address, text, stream=stream, timeout=300)


def bench_modes(stack: LocalStack, requests: int) -> dict[str, Any]:
    """Unary vs streaming, interleaved."""
    out: dict[str, dict[str, list[float]]] = {
        m: {"latency_s": [], "ttfa_s": [], "rtf": []} for m in ("unary", "stream")
    }
    for i in range(requests):
        text = TEXTS[i % len(TEXTS)]
        for mode in ("unary", "stream") if i % 2 == 0 else ("stream", "unary"):
            r = _run(stack.gateway, text, mode == "stream")
            out[mode]["latency_s"].append(r.elapsed_s)
            out[mode]["rtf"].append(r.rtf)
            # Unary's first audio is its whole answer.
            out[mode]["ttfa_s"].append(r.first_audio_s if r.first_audio_s else r.elapsed_s)
    result: dict[str, Any] = {m: {k: summary(v) for k, v in d.items()} for m, d in out.items()}
    result["ttfa_ratio_stream_over_unary"] = (
        result["stream"]["ttfa_s"]["median"] / result["unary"]["ttfa_s"]["median"]
    )
    return result


def bench_telemetry(on: LocalStack, off: LocalStack, requests: int) -> dict[str, Any]:
    """The same streaming requests, alternating between a traced and an untraced stack."""
    lat: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(requests):
        text = TEXTS[i % len(TEXTS)]
        for name, stack in (("on", on), ("off", off)) if i % 2 == 0 else (("off", off), ("on", on)):
            lat[name].append(_run(stack.gateway, text, stream=True).elapsed_s)
    on_s, off_s = summary(lat["on"]), summary(lat["off"])
    return {
        "telemetry_on": on_s,
        "telemetry_off": off_s,
        "median_ratio_on_over_off": on_s["median"] / off_s["median"],
    }


def bench_concurrency(stack: LocalStack, streams: int, rounds: int) -> dict[str, Any]:
    """Audio seconds produced per wall second with `streams` concurrent streaming calls."""
    out: dict[str, Any] = {}
    for n in sorted({1, streams}):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(
                pool.map(
                    lambda i: _run(stack.gateway, TEXTS[i % len(TEXTS)], True), range(n * rounds)
                )
            )
        wall = time.perf_counter() - t0
        audio = sum(r.duration_s for r in results)
        out[f"concurrency_{n}"] = {
            "requests": len(results),
            "audio_s": audio,
            "wall_s": wall,
            "audio_s_per_wall_s": audio / wall,
            "ttfa_s": summary([r.first_audio_s or r.elapsed_s for r in results]),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=8, help="requests per compared variant")
    p.add_argument("--streams", type=int, default=2, help="concurrency for the throughput run")
    p.add_argument("--out", default="bench/results/latest.json")
    p.add_argument("--run-dir", default="runs/bench")
    args = p.parse_args(argv)

    # A real OTLP/gRPC endpoint in this process (the one the tests use).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from otlp_receiver import OtlpReceiver

    run_dir = Path(args.run_dir) / time.strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_threads": torch.get_num_threads(),
        },
        "texts": len(TEXTS),
    }
    with OtlpReceiver() as receiver:
        on_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        with LocalStack(run_dir / "on", env=on_env) as on:
            _run(on.gateway, "Warm up.", True)
            print("unary vs streaming ...", flush=True)
            result["modes"] = bench_modes(on, args.requests)
            print("concurrency ...", flush=True)
            result["concurrency"] = bench_concurrency(on, args.streams, 2)
            with LocalStack(run_dir / "off", env={"OTEL_SDK_DISABLED": "true"}) as off:
                _run(off.gateway, "Warm up.", True)
                print("telemetry on vs off ...", flush=True)
                result["telemetry"] = bench_telemetry(on, off, args.requests)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
