"""docs/security.md "Local TLS": its recipe, run as written, brings up an mTLS local stack
that `voxline say` synthesises through; a plaintext client gets a hint; a launcher whose
health checks cannot get through says so while it waits and shows the service's log tail.

The recipe's blocks are taken from the document (the `<!-- local-tls: NAME -->` markers)
and run in a temporary directory with the virtual environment's `bin` first on PATH, as
after `. .venv/bin/activate`. Two changes, both about ports: `voxline serve` gets
`--free-ports` (another stack may hold 50051-50054, 8080 and 9464-9467), and the say
command's `--server 127.0.0.1:50051` becomes the gateway address the stack printed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from docs_blocks import labelled  # tests/ is on sys.path

from services.cli.stack import LocalStack, StackError
from services.runtime.config import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"


def recipe(name: str) -> str:
    """The shell block labelled `<!-- local-tls: NAME -->` in docs/security.md."""
    block = labelled(DOC, "local-tls", name)
    assert block.lang == "sh", block.where
    return block.text


def _env() -> dict[str, str]:
    """The shell's environment: the venv first on PATH, no TLS settings of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXLINE_TLS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _sh(script: str, cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where the recipe's certificate block has run."""
    cwd = tmp_path_factory.mktemp("local-tls")
    done = _sh(recipe("certificates"), cwd)
    assert done.returncode == 0, done.stderr
    for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key"):
        assert (cwd / "out" / "tls" / name).is_file(), name
    return cwd


def test_the_recipe_serves_and_says_over_mtls(workdir: Path) -> None:
    serve_command = recipe("serve").rstrip()
    assert serve_command.startswith("voxline serve --tls-cert")
    serve = subprocess.Popen(
        ["bash", "-c", f"exec {serve_command} --free-ports"],
        cwd=workdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's job
    )
    assert serve.stdout is not None
    lines: list[str] = []
    try:
        for line in serve.stdout:
            lines.append(line)
            if found := re.search(r"Gateway: (\S+) \(mTLS\)", line):
                gateway = found.group(1)
                break
        else:
            pytest.fail("voxline serve stopped:\n" + "".join(lines))
        say = recipe("say").replace(f"127.0.0.1:{DEFAULT_PORTS['gateway']}", gateway)
        done = _sh(say, workdir)
        assert done.returncode == 0, done.stdout + done.stderr
        with wave.open(str(workdir / "out" / "tls-hello.wav")) as wav:
            assert wav.getnframes() / wav.getframerate() > 0.5

        # A plaintext client, then one with no certificate: each gets a hint.
        plain = _sh(f'voxline say "Hello." -o out/x.wav --server {gateway}', workdir)
        assert plain.returncode == 1
        assert "Socket closed" in plain.stderr, plain.stderr
        assert "hint: the server may require TLS: pass --tls-ca" in plain.stderr
        no_cert = _sh(
            f'voxline say "Hello." -o out/x.wav --server {gateway} --tls-ca out/tls/ca.crt',
            workdir,
        )
        assert no_cert.returncode == 1
        assert "hint: the server may require a client certificate (mTLS)" in no_cert.stderr

        os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C
        rest, _ = serve.communicate(timeout=120)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    output = "".join(lines) + rest
    assert serve.returncode == 0, output
    assert "starting the local stack (mTLS" in output
    assert "stopped" in output
    # The server's side of the refused handshakes is in the gateway's log (gRPC core's).
    (gateway_log,) = (workdir / "runs").glob("*/gateway.log")
    log = gateway_log.read_text(errors="replace")
    assert "WRONG_VERSION_NUMBER" in log
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in log


def test_launcher_reports_progress_then_the_log_tail(workdir: Path, tmp_path: Path) -> None:
    """A TLS service probed in plaintext (what `voxline serve` did before it spoke TLS)
    never looks SERVING: the launcher says what it sees while it waits, and gives up with
    the service's log tail."""
    tls = workdir / "out" / "tls"
    stack = LocalStack(
        tmp_path,
        extra_args={"frontend": ["--tls-cert", str(tls / "server.crt"),
                                 "--tls-key", str(tls / "server.key")]},
    )  # fmt: skip
    seen: list[str] = []
    with pytest.raises(StackError) as err:
        stack.start(timeout=12, services=("frontend",), progress=seen.append)
    assert seen and "waiting for frontend" in seen[0], seen
    message = str(err.value)
    assert "not ready after 12 s: frontend" in message
    assert "Socket closed" in message and "TLS" in message
    assert "--- frontend.log" in message and '"message": "listening"' in message
    assert stack.procs == {}


def test_serve_refuses_inconsistent_tls_flags(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "serve",
         "--tls-cert", "out/tls/server.crt", "--tls-key", "out/tls/server.key",
         "--tls-client-ca", "out/tls/ca.crt"],
        cwd=workdir, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--tls-client-ca (mTLS) needs --tls-client-cert" in done.stderr
