"""`make bench` results as Markdown and a PNG plot (TTFA p95 and RTFX vs concurrency)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _ms(stat: dict[str, float] | None, key: str = "median") -> str:
    return "–" if not stat else f"{stat[key] * 1000:.0f}"


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Voxline benchmark", "", f"Machine: `{result['machine']}`", ""]
    sweep = result.get("sweep", {})
    if sweep:
        lines += [
            "## Concurrency sweep (closed loop, streaming; lengths round-robin)",
            "",
            "| variant | streams | TTFA p50 ms | TTFA p95 ms | TTFA p99 ms | stall p95 ms "
            "| e2e p50 ms | e2e p95 ms | RTFX | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for variant, levels in sweep.items():
            for n, r in levels.items():
                lines.append(
                    f"| {variant} | {n} | {_ms(r['ttfa_s'])} | {_ms(r['ttfa_s'], 'p95')} "
                    f"| {_ms(r['ttfa_s'], 'p99')} | {_ms(r['stall_s'], 'p95')} "
                    f"| {_ms(r['e2e_s'])} | {_ms(r['e2e_s'], 'p95')} | {r['rtfx']:.2f} "
                    f"| {len(r['errors'])} |"
                )
        lines.append("")
        lines += ["TTFA p50 / p95 ms by text length:", ""]
        for variant, levels in sweep.items():
            for n, r in levels.items():
                parts = [
                    f"{length} {_ms(v['ttfa_s'])}/{_ms(v['ttfa_s'], 'p95')}"
                    for length, v in r["by_length"].items()
                ]
                lines.append(f"- {variant} x{n}: " + ", ".join(parts))
        lines.append("")
    tax = result.get("tax")
    if tax:
        lines += [
            "## Microservice tax (one sentence, 1 stream, alternated)",
            "",
            "| | TTFA p50 ms | TTFA p95 ms | e2e p50 ms | e2e p95 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in ("stack", "in_process"):
            r = tax[name]
            lines.append(
                f"| {name} | {_ms(r['ttfa_s'])} | {_ms(r['ttfa_s'], 'p95')} "
                f"| {_ms(r['e2e_s'])} | {_ms(r['e2e_s'], 'p95')} |"
            )
        lines += [
            "",
            f"Ratio stack / in-process: TTFA p50 "
            f"{tax['ttfa_s_median_ratio_stack_over_in_process']:.2f}, e2e p50 "
            f"{tax['e2e_s_median_ratio_stack_over_in_process']:.2f}.",
            "",
        ]
    agent = result.get("voice_agent")
    if agent:
        chars, every = agent["chars_every_s"]
        lines += [
            f"## Voice agent (text streamed in, {chars} characters every {every * 1000:.0f} ms)",
            "",
            f"- first sentence complete -> first audio p50 / p95: "
            f"{_ms(agent['first_sentence_to_audio_s'])} / "
            f"{_ms(agent['first_sentence_to_audio_s'], 'p95')} ms; stall p95 "
            f"{_ms(agent['stall_s'], 'p95')} ms; errors {len(agent['errors'])}",
            "",
        ]
    admission = result.get("admission")
    if admission:
        o = admission["overload"]
        unloaded = admission["unloaded"]["ttfa_s"]
        ratio = admission.get("admitted_ttfa_p95_over_unloaded_p95")
        lines += [
            f"## Admission control ({o['callers']} callers = 4x --max-active, one sentence each)",
            "",
            f"- requests {o['requests']}: admitted {o['admitted']}, refused {o['refused']}, "
            f"lost {len(o['lost'])}; admitted RTFX {o['admitted_rtfx']:.2f}",
            f"- refusal latency p50 / p95 / max: {_ms(o['refusal_s'])} / "
            f"{_ms(o['refusal_s'], 'p95')} / {_ms(o['refusal_s'], 'max')} ms",
            f"- admitted TTFA p50 / p95: {_ms(o['admitted_ttfa_s'])} / "
            f"{_ms(o['admitted_ttfa_s'], 'p95')} ms; unloaded {_ms(unloaded)} / "
            f"{_ms(unloaded, 'p95')} ms; p95 ratio {ratio or 0:.2f}",
            "",
        ]
    vocoders = result.get("vocoder_stacks")
    if vocoders:
        lines += [
            "## The local stack per voice: VITS joe, student + fast vocoder, student + HiFi-GAN V1",
            "",
            "| stack | 12-word TTFA p50 ms | p95 ms | ~20 s paragraph RTF p50 | p95 "
            "| x real time | audio s | stall p95 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, r in vocoders.items():
            rtf = r["paragraph_rtf"] or {"median": math.nan, "p95": math.nan}
            audio = (r["paragraph_audio_s"] or {}).get("median", math.nan)
            lines.append(
                f"| {name} | {_ms(r['twelve_words_ttfa_s'])} "
                f"| {_ms(r['twelve_words_ttfa_s'], 'p95')} | {rtf['median']:.3f} "
                f"| {rtf['p95']:.3f} | {1 / rtf['median']:.1f} | {audio:.1f} "
                f"| {_ms(r['paragraph_stall_s'], 'p95')} | {len(r['errors'])} |"
            )
        lines.append("")
    peers = result.get("peers")
    if peers:
        lines += [
            "## In one process: each Voxline voice vs the Piper peer (2 threads, alternated)",
            "",
            "| | text | TTFA p50 ms | TTFA p95 ms | RTF p50 | RTF p95 | x real time |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, by_length in peers.items():
            if not isinstance(by_length, dict):
                continue
            for length, r in by_length.items():
                rtf = r["rtf"]
                lines.append(
                    f"| {name} | {length} | {_ms(r['ttfa_s'])} | {_ms(r['ttfa_s'], 'p95')} "
                    f"| {rtf['median']:.3f} | {rtf['p95']:.3f} | {1 / rtf['median']:.1f} |"
                    if rtf
                    else f"| {name} | {length} | – | – | – | – | – |"
                )
        if not peers.get("piper_installed"):
            lines.append(
                "\nPiper not measured: install the `train` extra "
                "(`pip install -e '.[train]'`; `make bench` does)."
            )
        lines.append("")
    telemetry = result.get("telemetry")
    if telemetry:
        lines += [
            "## Telemetry on vs off (one sentence per request, alternated)",
            "",
            "| streams | e2e p50 ms on | e2e p50 ms off | ratio on/off |",
            "|---:|---:|---:|---:|",
        ]
        for key, r in telemetry.items():
            lines.append(
                f"| {key.removeprefix('streams_')} | {_ms(r['on']['e2e_s'])} "
                f"| {_ms(r['off']['e2e_s'])} | {r['e2e_median_ratio_on_over_off']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """TTFA p95 and RTFX vs concurrency, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ttfa, rtfx) = plt.subplots(1, 2, figsize=(10, 4))
    for variant, levels in result.get("sweep", {}).items():
        xs = [int(n) for n in levels]
        ttfa.plot(xs, [(r["ttfa_s"] or {}).get("p95", 0) * 1000 for r in levels.values()],
                  marker="o", label=variant)  # fmt: skip
        rtfx.plot(xs, [r["rtfx"] for r in levels.values()], marker="o", label=variant)
    ttfa.set(xlabel="concurrent streams", ylabel="TTFA p95 (ms)", title="Time to first audio")
    rtfx.set(xlabel="concurrent streams", ylabel="audio s / wall s", title="Aggregate RTFX")
    for ax in (ttfa, rtfx):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
