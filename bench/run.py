"""Voxline benchmark: latency and throughput of the real local stack, as JSON.

Every comparison is measured in one run, interleaved, on the same machine, and reported as
medians and p95 (machines here are noisy; never compare numbers across runs):

- unary vs streaming: end-to-end latency, time-to-first-audio (TTFA), real-time factor;
- a concurrency sweep (closed loop at 1, 2, 4, 8 streams; texts of three lengths): TTFA
  p50/p95/p99, stall p95, end-to-end p50/p95, aggregate RTFX, errors — with the stages'
  dynamic batching on and off (`--max-batch-size 1`), alternated level by level;
- telemetry cost: a stack with telemetry on (OTLP export to a local receiver) against one
  with `OTEL_SDK_DISABLED=true`, at 1 and 4 streams, alternated;
- the microservice tax: the 4-service stack against the same stages composed in one
  process (bench/load.py `InProcess`), request by request;
- the stage hops' transport: the same stack with the stages on loopback TCP ports against
  one with them on Unix domain sockets (`LocalStack(transport="unix")`, the co-located
  topology of docs/deploy.md), one streamed sentence at a time, alternated (`--only
  transport` runs this part alone);
- a voice agent: text streamed in as a language model writes it (SynthesizeTextStream),
  latency from the first sentence's completion to its first audio, and stalls;
- vocoders: the local stack with the fast vocoder against one with HiFi-GAN V1 (TTFA of a
  12-word sentence, end-to-end RTF of a ~20 s paragraph), alternated;
- peers: the stages in one process with each vocoder against the Piper voice on onnxruntime
  (bench/peer.py, when the `train` extra is installed), the CPU tool a user might pick
  instead.

Writes JSON, a Markdown summary and a PNG plot next to `--out`.
Usage: `make bench` (or `python -m bench.run --out bench/results/latest.json`);
`--smoke` runs a seconds-long version of every part (make test runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import peer
from bench.load import (
    AGENT_CHARS,
    AGENT_EVERY_S,
    PARAGRAPH,
    SWEEP_LENGTHS,
    InProcess,
    StreamResult,
    closed_loop,
    describe,
    overload,
    stream_once,
    summary,
    voice_agent_once,
)
from bench.report import markdown, plot
from services.cli.client import SynthesisResult, synthesize
from services.cli.stack import LocalStack, Transport
from services.gateway.admission import AdmissionConfig
from services.runtime.voice import VOICE_NAME
from services.voices.catalog import JOE_VOICE
from telemetry.otlp_receiver import OtlpReceiver

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech should start quickly, even when the sentence is long.",
    "On March 3rd, 2026, the invoice came to $1,234.56.",
    "Short one.",
]


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


def bench_sweep(
    variants: dict[str, LocalStack], levels: list[int], rounds: int, lengths: list[str]
) -> dict[str, dict[str, Any]]:
    """Each concurrency level against each variant, the variants' order alternating."""
    out: dict[str, dict[str, Any]] = {name: {} for name in variants}
    for i, n in enumerate(levels):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in order:
            print(f"  {name}: {n} streams ...", flush=True)
            out[name][str(n)] = closed_loop(variants[name].gateway, n, rounds, lengths)
    return out


def bench_telemetry(
    on: LocalStack, off: LocalStack, levels: list[int], rounds: int
) -> dict[str, Any]:
    """Streams of one sentence against a traced and an untraced stack, alternated."""
    out: dict[str, Any] = {}
    for i, n in enumerate(levels):
        pair = (("on", on), ("off", off)) if i % 2 == 0 else (("off", off), ("on", on))
        runs = {name: closed_loop(stack.gateway, n, rounds, ["sentence"]) for name, stack in pair}
        out[f"streams_{n}"] = {
            "on": runs["on"],
            "off": runs["off"],
            "e2e_median_ratio_on_over_off": runs["on"]["e2e_s"]["median"]
            / runs["off"]["e2e_s"]["median"],
        }
    return out


def bench_tax(stack: LocalStack, requests: int) -> dict[str, Any]:
    """The stack vs the same stages in this process, one request at a time, alternated."""
    inproc = InProcess(threads=2)
    inproc.stream_once("sentence")
    results: dict[str, list[StreamResult]] = {"stack": [], "in_process": []}
    for i in range(requests):
        pair = ("stack", "in_process") if i % 2 == 0 else ("in_process", "stack")
        for name in pair:
            if name == "stack":
                results[name].append(stream_once(stack.gateway, "sentence"))
            else:
                results[name].append(inproc.stream_once("sentence"))
    out = {name: describe(r, 0.0) for name, r in results.items()}
    for key in ("ttfa_s", "e2e_s"):
        out[f"{key}_median_ratio_stack_over_in_process"] = (
            out["stack"][key]["median"] / out["in_process"][key]["median"]
        )
    return out


#: Streamed requests per transport in `bench_transport` (at least; `--requests` if larger).
TRANSPORT_REQUESTS = 24


def bench_transport(stacks: dict[Transport, LocalStack], requests: int) -> dict[str, Any]:
    """The same stack config with the stages reached over loopback TCP and over Unix
    sockets: one streamed sentence at a time, the order alternating request by request.
    TTFA and end-to-end medians and p95, and their ratios unix / tcp."""
    results: dict[str, list[StreamResult]] = {name: [] for name in stacks}
    for i in range(requests):
        order = list(stacks) if i % 2 == 0 else list(reversed(stacks))
        for name in order:
            results[name].append(stream_once(stacks[name].gateway, "sentence", cap_s=math.inf))
    out: dict[str, Any] = {"text": "sentence", "requests_each": requests}
    for name, rs in results.items():
        described = describe(rs, 0.0)
        out[name] = {k: described[k] for k in ("requests", "errors", "ttfa_s", "e2e_s", "stall_s")}
    # The hop alone: a gateway -> vocoder round trip with no model work (grpc.health.v1).
    hops = hop_round_trips({name: stack.address("vocoder") for name, stack in stacks.items()})
    for name, rtt in hops.items():
        out[name]["hop_rtt_s"] = rtt
    for key in ("ttfa_s", "e2e_s", "hop_rtt_s"):
        for stat in ("median", "p95"):
            unix, tcp = out["unix"][key], out["tcp"][key]
            if unix and tcp:
                out[f"{key}_{stat}_ratio_unix_over_tcp"] = unix[stat] / tcp[stat]
    return out


#: Round trips per transport in `hop_round_trips`, in alternating blocks of HOP_BLOCK.
HOP_CALLS, HOP_BLOCK = 400, 50


def hop_round_trips(targets: dict[str, str]) -> dict[str, dict[str, float] | None]:
    """Unary grpc.health.v1 checks over each target's channel (kept open, as the gateway's
    are), in alternating blocks: what one stage hop costs with no model work behind it."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    channels = {name: grpc.insecure_channel(target) for name, target in targets.items()}
    try:
        stubs = {name: health_pb2_grpc.HealthStub(c) for name, c in channels.items()}
        request = health_pb2.HealthCheckRequest()
        for stub in stubs.values():
            for _ in range(HOP_BLOCK):  # connect and warm up
                stub.Check(request, timeout=10)
        for block in range(HOP_CALLS // HOP_BLOCK):
            order = list(stubs) if block % 2 == 0 else list(reversed(stubs))
            for name in order:
                for _ in range(HOP_BLOCK):
                    t0 = time.perf_counter()
                    stubs[name].Check(request, timeout=10)
                    times[name].append(time.perf_counter() - t0)
    finally:
        for channel in channels.values():
            channel.close()
    return {name: summary(values) for name, values in times.items()}


def run_transport(
    run_dir: Path, env: dict[str, str], extra_args: dict[str, list[str]], requests: int
) -> dict[str, Any]:
    """Start a tcp and a unix stack of the same config side by side, warm both up, and
    compare them (bench_transport)."""
    with (
        LocalStack(run_dir / "tcp", env=env, extra_args=extra_args) as tcp,
        LocalStack(run_dir / "unix", env=env, extra_args=extra_args, transport="unix") as unix,
    ):
        for stack in (tcp, unix):
            for _ in range(2):
                _run(stack.gateway, "Warm up.", True)
        return bench_transport({"tcp": tcp, "unix": unix}, requests)


def _transport_line(transport: dict[str, Any]) -> str:
    def ms(name: str, key: str, stat: str, digits: int = 0) -> str:
        value = transport[name].get(key)
        return f"{value[stat] * 1000:.{digits}f}" if value else "–"

    parts = [
        f"{name}: TTFA p50/p95 {ms(name, 'ttfa_s', 'median')}/{ms(name, 'ttfa_s', 'p95')} ms, "
        f"e2e p50/p95 {ms(name, 'e2e_s', 'median')}/{ms(name, 'e2e_s', 'p95')} ms"
        for name in ("tcp", "unix")
    ]
    hops = ", ".join(
        f"{name} {ms(name, 'hop_rtt_s', 'median', 3)}/{ms(name, 'hop_rtt_s', 'p95', 3)}"
        for name in ("tcp", "unix")
    )
    parts.append(f"one hop (health check) p50/p95 ms: {hops}")
    ratios = ", ".join(
        f"{key} {transport.get(f'{key}_median_ratio_unix_over_tcp', float('nan')):.3f}"
        for key in ("ttfa_s", "e2e_s", "hop_rtt_s")
    )
    return (
        f"transport ({transport['requests_each']} streams each): "
        + "; ".join(parts)
        + f"; median ratio unix/tcp: {ratios}"
    )


def bench_overload(stack: LocalStack, requests: int, seconds: float) -> dict[str, Any]:
    """Admission control at 4x the gateway's configured capacity (`--max-active`), against
    the same stack's unloaded TTFA measured just before."""
    unloaded = closed_loop(stack.gateway, 1, requests, ["sentence"])
    loaded = overload(stack.gateway, 4 * AdmissionConfig().max_active, seconds)
    out = {"unloaded": unloaded, "overload": loaded}
    if loaded["admitted_ttfa_s"] and unloaded["ttfa_s"]:
        out["admitted_ttfa_p95_over_unloaded_p95"] = (
            loaded["admitted_ttfa_s"]["p95"] / unloaded["ttfa_s"]["p95"]
        )
    return out


def bench_voice_agent(stack: LocalStack, requests: int) -> dict[str, Any]:
    """Text written as a language model writes it (~4 characters every 30 ms), spoken as it
    comes: latency from the first sentence's completion to its first audio, and stalls."""
    results = [voice_agent_once(stack.gateway, PARAGRAPH) for _ in range(requests)]
    ok = [r for r in results if r.error is None]
    return {
        "chars_every_s": [AGENT_CHARS, AGENT_EVERY_S],
        "requests": len(results),
        "errors": sorted(r.error for r in results if r.error),
        "first_sentence_to_audio_s": summary(
            [r.first_sentence_to_audio_s for r in ok if r.first_sentence_to_audio_s is not None]
        ),
        "stall_s": summary([r.stall_s for r in ok]),
    }


def _rtf(results: list[StreamResult]) -> dict[str, float] | None:
    return summary([r.elapsed_s / r.audio_s for r in results if r.completed and r.audio_s])


def bench_peers(requests: int, lengths: list[str]) -> dict[str, Any]:
    """Voxline's stages in one process — the Piper joe voice as VITS stages, the student
    with the fast vocoder and with HiFi-GAN V1 — against the Piper peer (when installed),
    all on two threads, request by request, alternated: TTFA, stall and RTF (wall / audio
    seconds)."""
    peers: dict[str, Any] = {
        "voxline_vits": InProcess(threads=2, voice=JOE_VOICE),
        # Sentence by sentence, each vocoded whole: how Piper runs (its mode, like for like).
        "voxline_vits_whole_sentences": InProcess(threads=2, voice=JOE_VOICE, whole_sentences=True),
        "voxline_fast": InProcess(threads=2, vocoder="fast", voice=VOICE_NAME),
        "voxline_hifigan": InProcess(threads=2, vocoder="hifigan", voice=VOICE_NAME),
    }
    if peer.available():
        peers["piper"] = peer.PiperPeer(threads=2)
    for p in peers.values():
        p.stream_once("sentence")  # warm-up
    results: dict[str, dict[str, list[StreamResult]]] = {
        name: {length: [] for length in lengths} for name in peers
    }
    for i in range(requests):
        order = list(peers)[i % len(peers) :] + list(peers)[: i % len(peers)]  # rotate
        for length in lengths:
            for name in order:
                results[name][length].append(peers[name].stream_once(length, math.inf))
    out: dict[str, Any] = {"piper_installed": "piper" in peers}
    for name, by_length in results.items():
        out[name] = {
            length: {
                "ttfa_s": summary([r.ttfa_s for r in rs if r.ttfa_s is not None]),
                "stall_s": summary([r.stall_s for r in rs]),
                "rtf": _rtf(rs),
                "audio_s": summary([r.audio_s for r in rs]),
            }
            for length, rs in by_length.items()
        }
    return out


def bench_vocoder_stacks(stacks: dict[str, LocalStack], requests: int) -> dict[str, Any]:
    """Local stacks each serving one voice or vocoder, in rotation: TTFA of a 12-word
    sentence, and end-to-end RTF of the ~20 s paragraph streamed to the end."""
    results: dict[str, dict[str, list[StreamResult]]] = {
        name: {"twelve_words": [], "paragraph": []} for name in stacks
    }
    for i in range(requests):
        order = list(stacks)[i % len(stacks) :] + list(stacks)[: i % len(stacks)]  # rotate
        for length in ("twelve_words", "paragraph"):
            for name in order:
                results[name][length].append(
                    stream_once(stacks[name].gateway, length, cap_s=math.inf)
                )
    out: dict[str, Any] = {}
    for name, by_length in results.items():
        errors = sorted(r.error for rs in by_length.values() for r in rs if r.error)
        out[name] = {
            "errors": errors,
            "twelve_words_ttfa_s": summary(
                [r.ttfa_s for r in by_length["twelve_words"] if r.ttfa_s is not None]
            ),
            "paragraph_rtf": _rtf(by_length["paragraph"]),
            "paragraph_audio_s": summary([r.audio_s for r in by_length["paragraph"]]),
            "paragraph_stall_s": summary([r.stall_s for r in by_length["paragraph"]]),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=8, help="requests per compared variant")
    p.add_argument("--levels", default="1,2,4,8", help="concurrency levels of the sweep")
    p.add_argument("--rounds", type=int, default=3, help="requests per caller per level")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run of every part")
    p.add_argument("--out", default="bench/results/latest.json")
    p.add_argument("--run-dir", default="runs/bench")
    p.add_argument(
        "--only",
        choices=["transport"],
        help="run one part alone: transport (stage hops over TCP vs Unix sockets)",
    )
    args = p.parse_args(argv)
    levels = [int(n) for n in args.levels.split(",")]
    lengths = list(SWEEP_LENGTHS)
    if args.smoke:
        args.requests, args.rounds, levels, lengths = 1, 1, [1, 2], ["sentence"]

    run_dir = Path(args.run_dir) / time.strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpus": os.cpu_count(),
        },
        "settings": {"levels": levels, "rounds": args.rounds, "lengths": lengths},
    }
    no_batching = {s: ["--max-batch-size", "1"] for s in ("frontend", "acoustic", "vocoder")}
    # The sweep measures the engine past the gateway's admission limit: lift it there.
    unlimited = ["--max-active", "64", "--max-waiting", "64"]
    no_batching["gateway"] = unlimited
    transport_requests = 2 if args.smoke else max(args.requests, TRANSPORT_REQUESTS)
    if args.only == "transport":
        with OtlpReceiver() as receiver:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
            print("stage hops: loopback TCP vs Unix sockets ...", flush=True)
            result["transport"] = run_transport(
                run_dir, env, {"gateway": unlimited}, transport_requests
            )
        return _write(result, Path(args.out))
    with OtlpReceiver() as receiver:
        on_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        off_env = {"OTEL_SDK_DISABLED": "true"}
        with (
            LocalStack(run_dir / "on", env=on_env, extra_args={"gateway": unlimited}) as on,
            LocalStack(run_dir / "nobatch", env=on_env, extra_args=no_batching) as nobatch,
            LocalStack(run_dir / "off", env=off_env, extra_args={"gateway": unlimited}) as off,
        ):
            for stack in (on, nobatch, off):
                _run(stack.gateway, "Warm up.", True)
            print("unary vs streaming ...", flush=True)
            result["modes"] = bench_modes(on, args.requests)
            print("concurrency sweep, batching on vs off ...", flush=True)
            variants = {"batching": on, "no-batching": nobatch}
            result["sweep"] = bench_sweep(variants, levels, args.rounds, lengths)
            print("telemetry on vs off ...", flush=True)
            telemetry_levels = [1] if args.smoke else [1, 4]
            result["telemetry"] = bench_telemetry(on, off, telemetry_levels, args.rounds)
            print("microservice tax ...", flush=True)
            result["tax"] = bench_tax(on, args.requests)
            print("voice agent: text streamed in ...", flush=True)
            result["voice_agent"] = bench_voice_agent(on, args.requests)
        print("stage hops: loopback TCP vs Unix sockets ...", flush=True)
        result["transport"] = run_transport(
            run_dir / "transport", on_env, {"gateway": unlimited}, transport_requests
        )
        print("admission control at 4x capacity ...", flush=True)
        with LocalStack(run_dir / "admission", env=on_env) as admitting:
            _run(admitting.gateway, "Warm up.", True)
            result["admission"] = bench_overload(admitting, args.requests, 5 if args.smoke else 60)
        print("voices through the local stack: VITS vs student (fast, HiFi-GAN) ...", flush=True)
        fast_args, hifigan_args = ({"vocoder": ["--vocoder", v]} for v in ("fast", "hifigan"))
        student_env = {**on_env, "VOXLINE_VOICES": VOICE_NAME}
        with (
            LocalStack(run_dir / "vits", env={**on_env, "VOXLINE_VOICES": JOE_VOICE}) as vits,
            LocalStack(run_dir / "fast", env=student_env, extra_args=fast_args) as fast,
            LocalStack(run_dir / "hifigan", env=student_env, extra_args=hifigan_args) as hifigan,
        ):
            for stack in (vits, fast, hifigan):
                _run(stack.gateway, "Warm up.", True)
            result["vocoder_stacks"] = bench_vocoder_stacks(
                {"vits": vits, "fast": fast, "hifigan": hifigan}, args.requests
            )
    print("in one process: VITS, student (fast, HiFi-GAN) vs Piper ...", flush=True)
    peer_lengths = ["twelve_words"] if args.smoke else ["twelve_words", "paragraph"]
    result["peers"] = bench_peers(args.requests, peer_lengths)
    return _write(result, Path(args.out))


def _write(result: dict[str, Any], out: Path) -> int:
    """The JSON, its Markdown summary and (with a sweep) the plot, next to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    report = markdown(result)
    if "transport" in result:
        report += "\n" + _transport_line(result["transport"]) + "\n"
    out.with_suffix(".md").write_text(report)
    written = [out, out.with_suffix(".md")]
    if "sweep" in result:
        plot(result, out.with_suffix(".png"))
        written.append(out.with_suffix(".png"))
    print(report)
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
