"""Memory soak: every service's resident memory (RSS) over many varied requests.

Starts the real local stack, warms it up, then sends requests of *varied* text (seeded, so a
run is repeatable): varying lengths make the stages see ever new tensor shapes, which is what
per-shape caches (oneDNN primitives, allocator pools, malloc arenas) grow on. Every
`--sample-every` requests it reads each service's VmRSS from /proc; it fits a least-squares
slope (MiB per 100 requests) over the second half of the post-warm-up requests and writes
JSON with the samples and, per service, start/end/max RSS, growth and slope.

Usage: `python -m bench.soak --requests 600 --out bench/results/soak.json`
(`--env KEY=VALUE` sets an environment variable in every service, for experiments).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.stack import SERVICES, LocalStack
from services.gateway.admission import RETRY_PUSHBACK_KEY
from services.runtime.voice import SAMPLE_RATE_HZ
from training.corpus import HAND_WRITTEN, generate_templated

MIB = 1024 * 1024
#: The gateway admits 2 syntheses at once by default: more callers would be refused.
MAX_CONCURRENCY = 2
#: Pause between a round's last reply and the RSS sample: the stages' last batches finish.
SETTLE_S = 0.5


def varied_texts(
    count: int, seed: int = 0, max_sentences: int = 1, max_words: int = 16
) -> list[str]:
    """`count` texts of 1..`max_sentences` sentences drawn (seeded) from the training corpus's
    template grammar and hand-written sentences (numbers, dates, money, abbreviations), cut
    to 2..`max_words` words: lengths, words and therefore tensor shapes vary from request to
    request, while each stays short enough for hundreds of requests in minutes."""
    r = random.Random(seed)
    pool = generate_templated(max(4 * count, 200), seed) + list(HAND_WRITTEN)
    texts = []
    for _ in range(count):
        parts = r.sample(pool, r.randint(1, max_sentences))
        if r.random() < 0.3:  # an extra number of random size: more distinct lengths
            parts.insert(0, f"{r.randint(0, 10 ** r.randint(1, 6))} in all.")
        words = " ".join(parts).split()[: r.randint(2, max_words)]
        texts.append(" ".join(words).rstrip(",;:") + ("" if words[-1][-1] in ".?!" else "."))
    return texts


def rss_mib(pid: int) -> float:
    """Resident set size of process `pid` (VmRSS from /proc/<pid>/status), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_per_100(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of `ys` over `xs` (requests), in units per 100 requests."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return 100.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def _request(stub: synthesizer_pb2_grpc.SynthesizerStub, text: str, stream: bool) -> int:
    """One synthesis to completion; returns the audio bytes received."""
    request = pb.SynthesizeRequest(text=text)
    if stream:
        return sum(len(m.audio) for m in stub.SynthesizeStream(request, timeout=120))
    return len(stub.Synthesize(request, timeout=120).audio)


def soak(
    stack: LocalStack,
    requests: int,
    *,
    warmup: int = 50,
    sample_every: int = 25,
    concurrency: int = 2,
    seed: int = 0,
    max_sentences: int = 1,
    max_words: int = 16,
) -> dict[str, Any]:
    """Warm `stack` up with `warmup` requests, then send `requests` varied ones from
    `concurrency` callers (half streamed, half unary, interleaved), sampling every service's
    RSS after each `sample_every` requests, with none in flight. Returns the samples (from
    the end of the warm-up on) and per-service figures."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY} (the gateway's admission)")
    total = warmup + requests
    texts = varied_texts(total, seed, max_sentences, max_words)
    pids = {s: stack.procs[s].pid for s in SERVICES}
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    audio_bytes = 0

    def one(stub: synthesizer_pb2_grpc.SynthesizerStub, i: int) -> int:
        for _attempt in range(5):
            try:
                return _request(stub, texts[i], stream=i % 2 == 1)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    errors.append(f"request {i}: {exc.code().name}")  # never the text
                    return 0
                trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
                time.sleep(int(trailers.get(RETRY_PUSHBACK_KEY, 100)) / 1000)
        errors.append(f"request {i}: refused 5 times")
        return 0

    # Rounds of `sample_every` requests; RSS is read between rounds, with nothing in flight:
    # a sample taken mid-request also counts that request's transient buffers (on the
    # vocoder +-60 MiB from sample to sample), noise that would hide a slope.
    bounds = [0, warmup, *range(warmup + sample_every, total, sample_every), total]
    t0 = time.monotonic()
    with (
        grpc.insecure_channel(stack.gateway) as channel,
        ThreadPoolExecutor(concurrency, thread_name_prefix="soak") as pool,
    ):
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        for lo, hi in itertools.pairwise(dict.fromkeys(bounds)):
            audio_bytes += sum(pool.map(lambda i: one(stub, i), range(lo, hi)))
            time.sleep(SETTLE_S)
            rss = {s: round(rss_mib(pid), 2) for s, pid in pids.items()}
            samples.append({"requests": hi, "t_s": round(time.monotonic() - t0, 2), "rss": rss})
    samples = [s for s in samples if s["requests"] >= warmup]

    half = warmup + requests / 2
    second_half = [s for s in samples if s["requests"] >= half]
    services: dict[str, Any] = {}
    for service in SERVICES:
        ys = [s["rss"][service] for s in samples]
        start, end = ys[0], ys[-1]
        services[service] = {
            "start_mib": start,
            "end_mib": end,
            "max_mib": max(ys),
            "growth_mib": round(end - start, 2),
            "growth_pct": round(100 * (end - start) / start, 2),
            "max_growth_mib": round(max(ys) - start, 2),
            "slope_mib_per_100": round(
                slope_per_100(
                    [s["requests"] for s in second_half], [s["rss"][service] for s in second_half]
                ),
                3,
            ),
            "slope_all_mib_per_100": round(slope_per_100([s["requests"] for s in samples], ys), 3),
        }
    return {
        "warmup": warmup,
        "requests": requests,
        "concurrency": concurrency,
        "seed": seed,
        "max_sentences": max_sentences,
        "max_words": max_words,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "mean_text_chars": round(sum(map(len, texts)) / total, 1),
        "audio_s": round(audio_bytes / 2 / SAMPLE_RATE_HZ, 1),
        "errors": errors,
        "slope_window": f"requests {half:.0f}..{total}",
        "services": services,
        "samples": samples,
    }


def run(
    requests: int, run_dir: Path, env: Mapping[str, str] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Start a local stack (with `env` added to the services' environment) and soak it."""
    with LocalStack(run_dir, env=env) as stack:
        result = soak(stack, requests, **kwargs)
    result["env"] = dict(env or {})
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    return result


def main(argv: list[str] | None = None) -> None:
    """CLI: run a soak and write its JSON to `--out`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=600, help="requests after the warm-up")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--sample-every", type=int, default=25)
    p.add_argument("--concurrency", type=int, default=2, choices=range(1, MAX_CONCURRENCY + 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-sentences", type=int, default=1, help="sentences per text, at most")
    p.add_argument("--max-words", type=int, default=16, help="words per text, at most")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for every service")
    p.add_argument("--out", default="bench/results/soak.json")
    p.add_argument("--run-dir", default="runs/soak")
    a = p.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in a.env)
    result = run(
        a.requests,
        Path(a.run_dir),
        env,
        warmup=a.warmup,
        sample_every=a.sample_every,
        concurrency=a.concurrency,
        seed=a.seed,
        max_sentences=a.max_sentences,
        max_words=a.max_words,
    )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for service, r in result["services"].items():
        print(
            f"{service:9s} start {r['start_mib']:7.1f}  end {r['end_mib']:7.1f}  "
            f"max {r['max_mib']:7.1f} MiB  growth {r['growth_mib']:+6.1f} MiB "
            f"({r['growth_pct']:+.1f} %)  slope {r['slope_mib_per_100']:+.2f} MiB/100 req"
        )
    print(f"{result['elapsed_s']} s, errors: {len(result['errors'])}; wrote {out}")


if __name__ == "__main__":
    main()
