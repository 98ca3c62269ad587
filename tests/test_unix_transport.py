"""Co-located stages: gRPC over Unix domain sockets (docs/deploy.md, "Co-located stages").

A service listens on `--listen unix:PATH` (VOXLINE_LISTEN) instead of `--host:--port`
(services/runtime/server.py: stale socket files removed, a socket in use refused, AF_UNIX's
path limit enforced); the gateway's stage channels (round_robin, retries) dial `unix:`
targets, and refuse TLS to one without a name to verify (services/gateway/stages.py). The
local stack runs its stages on sockets with `transport="unix"` (`voxline serve --transport
unix`): the same audio as over TCP, the same per-stage spans, and `voxline trace` explains
its requests as it does over TCP.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from docs_blocks import labelled  # tests/ is on sys.path
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.cli import main as cli
from services.cli.client import synthesize
from services.cli.stack import (
    MAX_UNIX_PATH_BYTES,
    STAGES,
    LocalStack,
    StackError,
    socket_dir,
    wait_serving,
)
from services.gateway.stages import channel_options, check_unix_tls
from services.runtime import server as runtime_server
from services.runtime.config import ServiceConfig, build_parser, parse_config
from services.runtime.tls import (
    PLAINTEXT,
    ClientTLS,
    ServerTLS,
    TLSConfigError,
    secure_or_insecure_channel,
)
from traceattr.analysis import analyze
from traceattr.model import KIND_CLIENT, KIND_SERVER, AttributionError, Trace
from traceattr.parse import load_run_dir, select_trace

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Sockets or ports. The audio is the same."
SERVING = health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------------------------
# --listen: the flag, the address, the socket file
# ---------------------------------------------------------------------------------------------


def test_listen_overrides_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceConfig(service="x", host="0.0.0.0", port=7).address == "0.0.0.0:7"
    parser = build_parser("vocoder", "test")
    cfg = parse_config("vocoder", parser, ["--listen", "unix:/run/voxline/vocoder.sock"])
    assert cfg.address == "unix:/run/voxline/vocoder.sock"
    monkeypatch.setenv("VOXLINE_LISTEN", "unix:/tmp/env.sock")
    cfg = parse_config("vocoder", build_parser("vocoder", "test"), ["--port", "9"])
    assert cfg.address == "unix:/tmp/env.sock"  # the variable, as every flag has
    assert "VOXLINE_LISTEN" in build_parser("gateway", "test").format_help()


def test_unix_socket_path() -> None:
    path = runtime_server.unix_socket_path
    assert path("unix:/run/voxline/a.sock") == "/run/voxline/a.sock"
    assert path("unix:///run/voxline/a.sock") == "/run/voxline/a.sock"
    assert path("unix:relative.sock") == "relative.sock"
    assert path("127.0.0.1:50052") is None
    assert path("dns:///frontend:50052") is None
    assert path("unix-abstract:voxline") is None  # no file


def _bound_socket(path: Path, listen: bool) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    if listen:
        s.listen()
    return s


def test_prepare_removes_a_stale_socket_and_refuses_a_live_one(tmp_path: Path) -> None:
    prepare = runtime_server._prepare_unix_socket
    # A directory that does not exist yet is made.
    fresh = tmp_path / "new" / "dir" / "a.sock"
    prepare(str(fresh))
    assert fresh.parent.is_dir() and not fresh.exists()
    # A socket file nobody listens on (its process was killed): removed.
    stale = tmp_path / "stale.sock"
    _bound_socket(stale, listen=False).close()
    assert stat.S_ISSOCK(stale.lstat().st_mode)
    prepare(str(stale))
    assert not stale.exists()
    # A socket something answers on: refused (gRPC would silently take the path over).
    live = tmp_path / "live.sock"
    with _bound_socket(live, listen=True), pytest.raises(RuntimeError, match="another process"):
        prepare(str(live))
    assert live.exists()
    # Not a socket: left alone, refused.
    regular = tmp_path / "file.sock"
    regular.write_text("keep me")
    with pytest.raises(RuntimeError, match="not a socket"):
        prepare(str(regular))
    assert regular.read_text() == "keep me"
    # Longer than AF_UNIX allows: a clear error instead of gRPC's.
    long = tmp_path / ("d" * (MAX_UNIX_PATH_BYTES + 1)) / "a.sock"
    with pytest.raises(RuntimeError, match="longer than the 107"):
        prepare(str(long))


def test_socket_dir_is_short_enough(tmp_path: Path) -> None:
    short, temporary = socket_dir(tmp_path)
    assert (short, temporary) == (tmp_path.absolute() / "sock", False)
    deep = tmp_path / ("x" * 90)
    chosen, temporary = socket_dir(deep)
    try:
        assert temporary and chosen.is_dir() and chosen.name.startswith("vx")
        assert all(len(os.fsencode(chosen / f"{s}.sock")) <= MAX_UNIX_PATH_BYTES for s in STAGES)
    finally:
        chosen.rmdir()


def test_local_stack_knows_its_transports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="transport"):
        LocalStack(tmp_path, transport="udp")  # type: ignore[arg-type]
    stack = LocalStack(tmp_path / "run", transport="unix")
    assert stack.address("vocoder") == f"unix:{stack.socket_dir}/vocoder.sock"
    assert stack.address("gateway").startswith("127.0.0.1:")  # clients keep TCP
    cmd = stack._command("vocoder")
    assert cmd[cmd.index("--listen") + 1] == stack.address("vocoder")
    gateway = stack._command("gateway")
    assert gateway[gateway.index("--acoustic-address") + 1] == stack.address("acoustic")
    assert "--listen" not in gateway
    assert "--listen" not in LocalStack(tmp_path / "tcp")._command("vocoder")


# ---------------------------------------------------------------------------------------------
# The gateway's stage channels over a socket; TLS
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def health_server(
    address: str, credentials: grpc.ServerCredentials | None = None
) -> Iterator[None]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    server.start()
    try:
        yield
    finally:
        server.stop(0).wait()


def _check(target: str, tls: ClientTLS = PLAINTEXT) -> int:
    with secure_or_insecure_channel(target, channel_options(), tls) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return int(reply.status)


def test_stage_channel_options_work_over_a_socket(tmp_path: Path) -> None:
    """round_robin, the retry policy and the reconnect backoff (services/gateway/stages.py)
    with a `unix:` target, in both spellings; a server restarted on the same socket (a
    restarted stage) is reconnected to by the same channel within the backoff's second."""
    path = tmp_path / "stage.sock"
    request = health_pb2.HealthCheckRequest()
    with health_server(f"unix:{path}"):
        assert _check(f"unix:{path}") == SERVING
        assert _check(f"unix://{path}") == SERVING
        channel = secure_or_insecure_channel(f"unix:{path}", channel_options())
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(request, timeout=10).status == SERVING
    assert not path.exists()  # gRPC unlinks its socket when it stops
    try:
        with pytest.raises(grpc.RpcError) as down:
            stub.Check(request, timeout=10)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        with health_server(f"unix:{path}"):
            t0 = time.monotonic()
            assert stub.Check(request, timeout=10, wait_for_ready=True).status == SERVING
            assert time.monotonic() - t0 < 5
    finally:
        channel.close()


def test_tls_to_a_socket_needs_a_server_name() -> None:
    plaintext, tls = ClientTLS(), ClientTLS(ca="/ca.crt")
    for stage in STAGES:
        check_unix_tls(stage, f"unix:/run/voxline/{stage}.sock", plaintext)
        check_unix_tls(stage, "dns:///frontend:50052", tls)  # TCP: the host is the name
        check_unix_tls(stage, f"unix:/s/{stage}.sock", ClientTLS(ca="/c", server_name="stage"))
    with pytest.raises(TLSConfigError, match=r"--acoustic-address unix:/s\.sock is a Unix socket"):
        check_unix_tls("acoustic", "unix:/s.sock", tls)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """out/tls/ of docs/security.md's local recipe (a CA, a server and a client cert)."""
    import subprocess

    cwd = tmp_path_factory.mktemp("tls")
    recipe = labelled(ROOT / "docs/security.md", "local-tls", "certificates").text
    done = subprocess.run(["bash", "-e", "-c", recipe], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return cwd / "out" / "tls"


def test_tls_over_a_socket_works_with_a_server_name(certificates: Path, tmp_path: Path) -> None:
    """TLS is not needed on a socket, but works: with `--tls-server-name` naming the
    certificate (a socket path is no host name), not without."""
    server = ServerTLS(str(certificates / "server.crt"), str(certificates / "server.key"))
    target = f"unix:{tmp_path / 'tls.sock'}"
    with health_server(target, server.credentials()):
        named = ClientTLS(ca=str(certificates / "ca.crt"), server_name="localhost")
        assert _check(target, named) == SERVING
        with pytest.raises(grpc.RpcError) as refused:
            _check(target, ClientTLS(ca=str(certificates / "ca.crt")))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_serve_refuses_tls_with_the_unix_transport(
    certificates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--transport", "unix", "--run-dir", str(tmp_path)]
    argv += ["--tls-cert", str(certificates / "server.crt")]
    argv += ["--tls-key", str(certificates / "server.key")]
    assert cli.main(argv) == 2
    assert "--transport unix serves the stages on Unix sockets" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was started


# ---------------------------------------------------------------------------------------------
# A real local stack on sockets, against the TCP one (tests/conftest.py `stack`)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unix_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("unix"), transport="unix", supervise=True) as s:
        yield s


def test_the_stages_listen_on_sockets_only(unix_stack: LocalStack) -> None:
    assert unix_stack.socket_dir == unix_stack.run_dir.absolute() / "sock"
    for stage in STAGES:
        address = unix_stack.address(stage)
        assert address == f"unix:{unix_stack.socket_dir}/{stage}.sock"
        assert stat.S_ISSOCK(Path(address[len("unix:") :]).lstat().st_mode)
        listening = [
            json.loads(line)
            for line in (unix_stack.run_dir / f"{stage}.log").read_text().splitlines()
            if '"listening"' in line
        ]
        assert listening and listening[-1]["address"] == address, listening
        wait_serving(address, 5)  # health over the socket (how start() waited)
    gateway = unix_stack.procs["gateway"].args
    for stage in STAGES:
        assert gateway[gateway.index(f"--{stage}-address") + 1] == unix_stack.address(stage)


def _synthesize(stack: LocalStack, stream: bool) -> tuple[int, str]:
    result = synthesize(stack.gateway, TEXT, stream=stream, timeout=120)
    assert result.trace_id
    return len(result.pcm), result.trace_id


@pytest.fixture(scope="module")
def syntheses(stack: LocalStack, unix_stack: LocalStack) -> dict[tuple[str, str], tuple[int, str]]:
    """(transport, unary|stream) -> (audio bytes, trace id) of the same text on each stack."""
    stacks = {"tcp": stack, "unix": unix_stack}
    done = {}
    for mode in ("unary", "stream"):
        for transport, s in stacks.items():
            done[(transport, mode)] = _synthesize(s, mode == "stream")
    return done


def test_the_same_audio_as_over_tcp(
    syntheses: dict[tuple[str, str], tuple[int, str]],
) -> None:
    for mode in ("unary", "stream"):
        tcp, unix = syntheses[("tcp", mode)][0], syntheses[("unix", mode)][0]
        assert unix == tcp > 0, mode


def _complete(trace: Trace) -> bool:
    """Every service exported its part: the gateway's server span, and a server span under
    each of its client spans (the stages export on their own schedules)."""
    clients = [s for s in trace.spans if s.kind == KIND_CLIENT]
    servers = [s for s in trace.spans if s.kind == KIND_SERVER]
    return (
        any(s.service == "gateway" for s in servers)
        and bool(clients)
        and all(any(s.parent_id == c.span_id for s in servers) for c in clients)
    )


def _trace(run_dir: Path, trace_id: str, timeout: float = 45.0) -> Trace:
    """The whole trace `trace_id` from the run dir's OTLP-JSON files, once it is complete
    and has not grown for a second."""
    deadline = time.monotonic() + timeout
    last: tuple[int, Trace] | None = None
    while True:
        try:
            trace = select_trace(load_run_dir(run_dir), trace_id)
        except AttributionError:
            trace = None
        if trace is not None and _complete(trace):
            if last is not None and last[0] == len(trace.spans):
                return trace
            last = (len(trace.spans), trace)
        if time.monotonic() > deadline:
            assert last is not None, f"trace {trace_id} never complete in {run_dir}"
            return last[1]
        time.sleep(1.0)


def _shape(trace: Trace) -> set[tuple[str, str, str]]:
    """What spans a trace has: (service, span name, kind), ids and times left out."""
    return {(s.service, s.name, s.kind) for s in trace.spans}


def test_the_same_stage_spans_as_over_tcp(
    stack: LocalStack,
    unix_stack: LocalStack,
    syntheses: dict[tuple[str, str], tuple[int, str]],
) -> None:
    """Per-stage spans do not depend on the transport: the same set of spans (client and
    server spans of every stage call, the stages' phase spans), from the same services."""
    for mode in ("unary", "stream"):
        tcp = _shape(_trace(stack.run_dir, syntheses[("tcp", mode)][1]))
        unix = _shape(_trace(unix_stack.run_dir, syntheses[("unix", mode)][1]))
        assert unix == tcp, (mode, sorted(unix ^ tcp))
        servers = {service for service, _, kind in unix if kind == KIND_SERVER}
        assert servers == {"gateway", *STAGES}, (mode, servers)


def test_voxline_trace_attributes_a_request_over_sockets(
    unix_stack: LocalStack,
    syntheses: dict[tuple[str, str], tuple[int, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`voxline trace` over the unix stack's run dir: every stage in the table, and at least
    99 % of a streamed request's time explained (as tests/test_telemetry_e2e.py requires over
    TCP; one scheduler hiccup on a loaded 2-core machine can cost a trace, so up to three)."""
    explained = []
    trace_id = syntheses[("unix", "stream")][1]
    for attempt in range(3):
        if attempt:
            trace_id = _synthesize(unix_stack, stream=True)[1]
        attribution = analyze(_trace(unix_stack.run_dir, trace_id))
        assert [s.stage for s in attribution.stages] == ["gateway", *STAGES]
        explained.append(attribution.explained_ns / attribution.e2e_ns)
        if explained[-1] >= 0.99:
            break
    assert max(explained) >= 0.99, explained
    out = io.StringIO()
    argv = ["trace", trace_id, "--run-dir", str(unix_stack.run_dir), "--json", "--wait", "0"]
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    shown = json.loads(out.getvalue())
    assert shown["trace_id"] == trace_id
    assert shown["explained_pct"] >= 99.0, shown["explained_pct"]


def test_a_killed_stage_comes_back_on_its_socket(unix_stack: LocalStack) -> None:
    """SIGKILL leaves the vocoder's socket file behind; the supervisor's restart removes it,
    listens there again, and the gateway's channel reconnects to it by itself. (Last: it
    restarts a stage of the module's stack.)"""
    path = Path(unix_stack.address("vocoder")[len("unix:") :])
    proc = unix_stack.procs["vocoder"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.exists()  # stale: nobody unlinked it
    deadline = time.monotonic() + 60
    while unix_stack.procs["vocoder"] is proc and time.monotonic() < deadline:
        time.sleep(0.1)
    restarted = unix_stack.procs["vocoder"]
    assert restarted is not proc, "the supervisor did not restart the vocoder"
    try:
        wait_serving(unix_stack.address("vocoder"), 120, restarted)
    except StackError as exc:
        pytest.fail(f"{exc}\n{unix_stack.log_tail('vocoder')}")
    assert "removed a stale socket file" in (unix_stack.run_dir / "vocoder.log").read_text()
    # The gateway's channel reconnects within its backoff (a second at most): until then a
    # call is UNAVAILABLE, "retry shortly" (as over TCP: tests/test_faults.py).
    deadline = time.monotonic() + 60
    while True:
        try:
            result = synthesize(unix_stack.gateway, "Back again.", stream=True, timeout=120)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the gateway did not reconnect to the socket"
            time.sleep(0.1)
    assert result.pcm
    assert unix_stack.restarts["vocoder"] == 1
