"""`voxline say` and `voxline trace` the way a new user runs them, against the real stack.

`say` streams into a file (header final once done) or buffers for stdout (`-o -`), reads the
text from stdin (`-`) and prints the trace id and request id on stderr; `trace` finds that
trace by either id right after the request (waiting for the export), says clearly when an
id is not there, names the latest trace when given none, and `trace report` counts refusals
apart from the latency percentiles.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

from services.cli.stack import LocalStack

CLI = [sys.executable, "-m", "services.cli.main"]
IDS = re.compile(r"trace id ([0-9a-f]{32})  request id (\S+)")
#: Long enough for every service's batch exporter (every ~5 s) on a loaded machine.
WAIT = ["--wait", "60"]


def voxline(
    *args: str, stdin: bytes | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, timeout=timeout, check=False
    )


def check_wav(data: bytes) -> tuple[int, int]:
    """(sample rate, frames) of a WAV whose header sizes match its data exactly."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert int.from_bytes(data[4:8], "little") == len(data) - 8  # RIFF size
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        frames = w.getnframes()
        pcm = w.readframes(frames)
        rate = w.getframerate()
    assert len(pcm) == 2 * frames and len(data) == 44 + len(pcm)  # data size = what is there
    return rate, frames


def ids_of(stderr: bytes) -> tuple[str, str]:
    match = IDS.search(stderr.decode())
    assert match, stderr.decode()
    return match.group(1), match.group(2)


def test_say_from_stdin_to_stdout_is_one_valid_wav(stack: LocalStack) -> None:
    done = voxline(
        "say", "-", "-o", "-", "--server", stack.gateway, stdin=b"Piped in, piped out.\n"
    )
    assert done.returncode == 0, done.stderr.decode()
    rate, frames = check_wav(done.stdout)  # stdout holds the WAV and nothing else
    assert rate == 22050 and frames > rate // 2
    err = done.stderr.decode()
    assert "wrote stdout:" in err and "RTF" in err
    _, request_id = ids_of(done.stderr)
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # the gateway made one up


def test_say_streams_into_a_file_and_unary_still_works(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "streamed.wav"
    done = voxline("say", "Streamed into a file.", "-o", str(out), "--server", stack.gateway)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith(f"wrote {out}:") and "TTFA" in done.stdout.decode()
    rate, frames = check_wav(out.read_bytes())
    assert frames > rate // 2
    assert not list(tmp_path.glob("**/*.partial"))
    ids_of(done.stderr)

    unary = tmp_path / "unary.wav"
    done = voxline(
        "say", "Not streamed.", "-o", str(unary), "--unary", "--sample-rate", "16000",
        "--server", stack.gateway,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert check_wav(unary.read_bytes())[0] == 16000 and "TTFA" not in done.stdout.decode()
    ids_of(done.stderr)


def test_say_into_a_pipe_writes_it_and_leaves_it_a_pipe(stack: LocalStack, tmp_path: Path) -> None:
    """A device or FIFO (`-o /dev/null`) is written once, whole: never replaced by a file."""
    fifo = tmp_path / "audio.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    done = voxline("say", "Into a pipe.", "-o", str(fifo), "--server", stack.gateway)
    reader.join(60)
    assert done.returncode == 0, done.stderr.decode()
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    rate, frames = check_wav(received[0])
    assert frames > rate // 4 and not list(tmp_path.glob("*.partial"))


def test_say_errors_are_readable_and_name_their_trace(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "never.wav"
    done = voxline("say", "Too fast.", "-o", str(out), "--rate", "4.1", "--server", stack.gateway)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "INVALID_ARGUMENT" in err and "got 4.1" in err, err  # not 4.099999904632568
    assert re.search(r"trace id [0-9a-f]{32}", err), err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written is left


def test_say_help_states_every_default() -> None:
    done = voxline("say", "--help", timeout=60)
    text = " ".join(done.stdout.decode().split())
    assert done.returncode == 0
    for expected in (
        "(default: out.wav)",
        "- for stdout",
        "- reads it from stdin",
        "(default: SynthesizeStream)",
        "(default: 127.0.0.1:50051)",
        "(default: 120)",
        "(default: 1, normal)",
        "(default: 0, the voice's native rate)",
    ):
        assert expected in text, expected


def test_trace_finds_a_request_by_trace_id_and_request_id(stack: LocalStack) -> None:
    done = voxline(
        "say", "Find me afterwards.", "-o", "-", "--server", stack.gateway, "--unary",
        "--rate", "1.1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    trace_id, request_id = ids_of(done.stderr)
    run_dir = ["--run-dir", str(stack.run_dir)]
    # Right after the request: the spans are usually not exported yet, and are waited for.
    by_trace = voxline("trace", trace_id, *run_dir, *WAIT, "--json")
    assert by_trace.returncode == 0, by_trace.stderr.decode()
    shown = json.loads(by_trace.stdout)
    assert shown["trace_id"] == trace_id and shown["request_ids"] == [request_id]
    assert shown["method"] == "unary" and shown["root"]["status"] != "error"
    assert {s["stage"] for s in shown["stages"]} >= {"gateway", "frontend", "acoustic", "vocoder"}

    by_request = voxline("trace", request_id, *run_dir, *WAIT)
    assert by_request.returncode == 0, by_request.stderr.decode()
    assert f"request id {request_id}: trace {trace_id}" in by_request.stderr.decode()
    assert "voxline.synthesis" in by_request.stdout.decode()


def test_trace_says_when_an_id_is_not_there(stack: LocalStack) -> None:
    missing = "0123456789abcdef0123456789abcdef"
    done = voxline("trace", missing, "--run-dir", str(stack.run_dir), "--wait", "1")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "waiting up to 1 s for the trace to be exported" in err
    assert f"{missing} not found" in err and "not there yet after waiting 1 s" in err
    assert done.stdout == b""  # and no other trace is shown instead


def test_trace_without_id_shows_the_newest_request_not_the_previous_one(
    stack: LocalStack,
) -> None:
    done = voxline("say", "The latest one.", "-o", "-", "--server", stack.gateway)
    trace_id, request_id = ids_of(done.stderr)
    # At once: its spans are most likely not exported yet, the gateway's log already has it.
    latest = voxline("trace", "--run-dir", str(stack.run_dir), *WAIT)
    assert latest.returncode == 0, latest.stderr.decode()
    err = latest.stderr.decode()
    assert "showing the latest request (" in err
    named = f"trace {trace_id} (SynthesizeStream, request id {request_id}), started "
    assert named in err, err
    assert re.search(r"started \d+ (s|min) ago", err), err


def test_trace_report_counts_refusals_apart(stack: LocalStack) -> None:
    start = time.time() - 1
    for text in ("One for the report.", "Two for the report."):
        done = voxline("say", text, "-o", "-", "--server", stack.gateway)
        assert done.returncode == 0, done.stderr.decode()
    refused = voxline("say", "Too slow.", "-o", "-", "--rate", "0.1", "--server", stack.gateway)
    assert refused.returncode == 1
    refused_trace = re.search(r"trace id ([0-9a-f]{32})", refused.stderr.decode())
    assert refused_trace
    argv = ["trace", "report", "--run-dir", str(stack.run_dir), "--start", f"{start:.3f}"]
    deadline = time.monotonic() + 60
    while True:  # until the three requests are exported
        done = voxline(*argv, "--json")
        report = json.loads(done.stdout) if done.returncode == 0 else {}
        if report.get("requests", 0) >= 3 and report.get("refused"):
            break
        assert time.monotonic() < deadline, done.stderr.decode()
        time.sleep(1)
    assert report["refused"].get("INVALID_ARGUMENT", 0) >= 1
    assert report["requests"] == report["count"] + sum(report["refused"].values()) + sum(
        report["failed"].values()
    )
    assert report["count"] >= 2  # the percentiles are over these only
    unsuccessful = {u["trace_id"]: u["status"] for u in report["unsuccessful"]}
    assert unsuccessful[refused_trace.group(1)] == "INVALID_ARGUMENT"
    assert refused_trace.group(1) not in report["tail"]["trace_ids"]
    text = voxline(*argv).stdout.decode()
    assert re.search(r"\d+ refused \(INVALID_ARGUMENT \d+", text), text
    assert re.search(r"over the \d+ ok: end-to-end p50", text), text


def test_the_say_command_voxline_serve_prints_runs_as_printed() -> None:
    """`make serve` runs the venv's Python without activating the venv: the printed
    command must name a voxline that exists (not assume it is on PATH)."""
    from services.cli.main import _voxline_command

    command = _voxline_command()
    assert shutil.which(command) or Path(command).is_file(), command
