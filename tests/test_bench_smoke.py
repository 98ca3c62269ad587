"""`make bench`'s harness runs end to end (a seconds-long version; the numbers are not
checked here: performance claims live in the benchmark's own results)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out),
         "--run-dir", str(tmp_path / "runs")],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    result = json.loads(out.read_text())
    sweep = result["sweep"]
    assert set(sweep) == {"batching", "no-batching"}
    for levels in sweep.values():
        assert set(levels) == {"1", "2"}
        for r in levels.values():
            assert r["errors"] == [] and r["rtfx"] > 0
            assert r["ttfa_s"]["p95"] >= r["ttfa_s"]["median"] > 0
            assert r["stall_s"]["n"] == r["requests"]
    assert result["tax"]["in_process"]["ttfa_s"]["median"] > 0
    assert result["telemetry"]["streams_1"]["e2e_median_ratio_on_over_off"] > 0
    agent = result["voice_agent"]
    assert agent["errors"] == [] and agent["first_sentence_to_audio_s"]["median"] > 0
    overload = result["admission"]["overload"]
    assert overload["lost"] == [] and overload["admitted"] > 0
    peers = result["peers"]
    measured = ["voxline_vits", "voxline_vits_whole_sentences", "voxline_fast", "voxline_hifigan"]
    measured += ["piper"] if peers["piper_installed"] else []
    for name in measured:
        assert peers[name]["twelve_words"]["rtf"]["median"] > 0
    for stack in ("vits", "fast", "hifigan"):
        stacked = result["vocoder_stacks"][stack]
        assert stacked["errors"] == [] and stacked["paragraph_rtf"]["median"] > 0
        assert stacked["twelve_words_ttfa_s"]["median"] > 0
    report = out.with_suffix(".md").read_text()
    assert "Concurrency sweep" in report and "The local stack per voice" in report
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
