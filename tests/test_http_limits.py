"""The HTTP front's limits (services/http/limits.py, docs/reliability.md "HTTP front").

A real `python -m services.http` process (uvicorn) with small limits, in front of a stand-in
gateway served from this process: it can hang or stream without end, counts health checks,
and records each call's deadline and when the call ended -- what a test could not see or
provoke with the real gateway. Timing bounds are generous (seconds): the CI box is loaded.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from voxline.v1 import synthesizer_pb2, synthesizer_pb2_grpc

from services.cli.stack import free_port, wait_http_ready
from services.http import HEALTH_PATH, READY_PATH
from services.http.app import AudioStream
from services.http.limits import CLOSE_GRACE_S
from services.http.main import DEFAULTS, build_parser

REQUEST_TIMEOUT_S = 6.0
BODY_TIMEOUT_S = 3.0
HEADER_TIMEOUT_S = 2.0
LIMIT = 2
READY_INTERVAL_S = 0.5
#: Added to every bound: the machine running the tests may be slow and busy.
SLACK_S = 15.0

#: Texts the stand-in gateway obeys: no audio until the call ends, or audio without end.
HANG, ENDLESS = "hang", "endless"
CHUNK = b"\x01\x00" * 16384
SPEECH = "/v1/audio/speech"


@dataclass
class Call:
    """One SynthesizeStream call as the stand-in gateway saw it."""

    text: str
    remaining_s: float | None
    ended: threading.Event = field(default_factory=threading.Event)


class StandInGateway(synthesizer_pb2_grpc.SynthesizerServicer):
    """SynthesizeStream that hangs (a text starting with HANG), streams until cancelled
    (ENDLESS) or sends one chunk; every call is recorded."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def SynthesizeStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = Call(request.text, context.time_remaining())
        context.add_callback(call.ended.set)  # on completion, cancellation or deadline
        self.calls.append(call)
        if request.text.startswith(HANG):
            call.ended.wait()
            return
        yield synthesizer_pb2.SynthesizeStreamResponse(audio=CHUNK)
        while request.text == ENDLESS and context.is_active():
            yield synthesizer_pb2.SynthesizeStreamResponse(audio=CHUNK)
            time.sleep(0.01)

    def wait_calls(self, text: str, count: int) -> list[Call]:
        """The first `count` calls with `text` (waits for them to arrive)."""
        return _wait(lambda: [c for c in self.calls if c.text == text][:count] or None, count)


class CountingHealth(health.HealthServicer):
    """grpc.health.v1 that counts Check calls."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.checks += 1
        return super().Check(request, context)


@dataclass
class Service:
    url: str
    port: int
    pid: int
    gateway: StandInGateway
    health: CountingHealth


def _wait(probe: Callable[[], Any], count: int = 1, timeout: float = SLACK_S) -> Any:
    """Poll `probe` until it returns something with at least `count` items (or truthy)."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got and (not isinstance(got, list) or len(got) >= count):
            return got
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    gateway, checks = StandInGateway(), CountingHealth()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    synthesizer_pb2_grpc.add_SynthesizerServicer_to_server(gateway, server)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    gateway_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port = free_port()
    cmd = [sys.executable, "-m", "services.http", "--port", str(port)]
    cmd += ["--gateway-address", f"127.0.0.1:{gateway_port}"]
    cmd += ["--request-timeout-s", str(REQUEST_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S)]
    cmd += ["--header-timeout-s", str(HEADER_TIMEOUT_S), "--limit-concurrency", str(LIMIT)]
    cmd += ["--ready-interval-s", str(READY_INTERVAL_S)]
    env = {k: v for k, v in os.environ.items() if k != "VOXLINE_API_TOKEN"}
    log_path = tmp_path_factory.mktemp("http-limits") / "http.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(url + READY_PATH, 60, proc)
        yield Service(url, port, proc.pid, gateway, checks)
    finally:
        proc.terminate()
        code = proc.wait(60)
        server.stop(None)
        assert code == 0, log_path.read_text()


def _speech_body(text: str) -> bytes:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    return json.dumps(body).encode()


def _head(port: int, length: int) -> bytes:
    """A complete request head for POST /v1/audio/speech with a body of `length` bytes."""
    return (
        f"POST {SPEECH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _get(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=SLACK_S) as reply:
            return reply.status, json.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _post(port: int, text: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S + SLACK_S)
    try:
        conn.request("POST", SPEECH, _speech_body(text), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _closes_within(sock: socket.socket, timeout: float, trickle: bytes = b"") -> bool:
    """Whether the server closes `sock` within `timeout`, sending `trickle` every 0.5 s."""
    sock.settimeout(0.5)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def _split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one raw HTTP/1.1 response with a content-length."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body[: int(headers["content-length"])]


def _assert_error_shape(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def _held_by(pid: int, server_port: int, client_port: int) -> bool:
    """Whether process `pid` still holds the server end of the loopback connection from
    `client_port` (Linux: /proc/net/tcp gives the socket's inode, /proc/PID/fd the holders)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
            if (local, remote) == (server_port, client_port) and fields[9] != "0":
                inodes.add(f"socket:[{fields[9]}]")
    links = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.add(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return bool(inodes & links)


def test_flags_default_to_settings_and_refuse_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args([])
    assert args.request_timeout_s == DEFAULTS.request_timeout_s
    assert args.body_timeout_s == DEFAULTS.body_timeout_s
    assert args.header_timeout_s == DEFAULTS.header_timeout_s
    assert args.limit_concurrency == DEFAULTS.limit_concurrency
    assert args.ready_interval_s == DEFAULTS.ready_interval_s
    monkeypatch.setenv("VOXLINE_BODY_TIMEOUT_S", "4.5")
    monkeypatch.setenv("VOXLINE_LIMIT_CONCURRENCY", "7")
    args = build_parser().parse_args(["--limit-concurrency", "9"])
    assert (args.body_timeout_s, args.limit_concurrency) == (4.5, 9)  # env, then the flag wins
    for flag in ("--limit-concurrency", "--request-timeout-s", "--header-timeout-s"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([flag, "0"])


def test_a_cut_stream_cancels_its_gateway_call() -> None:
    """A stream ended from outside (the request's deadline, while the client is not reading)
    cancels its gateway call itself, rather than leaving it to the gRPC deadline."""

    class Call:
        cancelled = False

        def __iter__(self) -> Call:
            return self

        def __next__(self) -> Any:
            return SimpleNamespace(audio=CHUNK)

        def cancel(self) -> bool:
            self.cancelled = True
            return True

    async def stalled_send(message: dict[str, Any]) -> None:
        if message.get("body"):
            await anyio.sleep_forever()  # a client that stopped reading

    async def main() -> None:
        with anyio.move_on_after(0.2):  # stands in for the request's deadline
            await stream({}, anyio.sleep_forever, stalled_send)  # type: ignore[arg-type]

    call = Call()
    first = SimpleNamespace(audio=CHUNK)
    stream = AudioStream(call, first, b"", "audio/pcm", "id", anyio.CapacityLimiter(1))
    anyio.run(main)
    assert call.cancelled


def test_requests_carry_the_deadline_and_keep_alive_works(service: Service) -> None:
    """A short synthesis and a second request on the same connection (the head timer must
    not close a keep-alive connection that is in use); the gateway call's deadline is at
    most the request's."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=SLACK_S)
    try:
        conn.request("POST", SPEECH, _speech_body("short"), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        assert (reply.status, reply.read()) == (200, CHUNK)
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    (call,) = service.gateway.wait_calls("short", 1)
    assert call.remaining_s is not None and 0 < call.remaining_s <= REQUEST_TIMEOUT_S


def test_slow_headers_are_closed(service: Service) -> None:
    """A connection that sends nothing, and one that trickles a request head a byte at a
    time, are both closed by the server within the head timeout (plus slack)."""
    address = ("127.0.0.1", service.port)
    with socket.create_connection(address) as silent, socket.create_connection(address) as slow:
        slow.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert _closes_within(slow, HEADER_TIMEOUT_S + SLACK_S, trickle=b"a")
        assert _closes_within(silent, HEADER_TIMEOUT_S + SLACK_S)
    assert _get(service.url + HEALTH_PATH)[0] == 200


def test_stalled_body_is_408_and_closed(service: Service) -> None:
    """Headers then nothing: 408 in the API's error shape, and the server closes the
    connection (the read below ends only when it does)."""
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.sendall(_head(service.port, 100) + b'{"model": ')
        status, headers, body = _split(_read_until_closed(sock, BODY_TIMEOUT_S + SLACK_S))
    assert status == 408 and headers["connection"] == "close"
    error = _assert_error_shape(json.loads(body))
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"


def test_overload_is_503_at_once_and_probes_still_answer(service: Service) -> None:
    """LIMIT requests hang in the gateway: the next is refused with 503 (not queued: it
    returns while they still hang), the probes still answer, and each hanging request ends
    at the total deadline with 504, its gateway call ended; then requests are admitted."""
    results: list[int] = []
    holders = [
        threading.Thread(target=lambda: results.append(_post(service.port, HANG)[0]))
        for _ in range(LIMIT)
    ]
    for t in holders:
        t.start()
    calls = service.gateway.wait_calls(HANG, LIMIT)
    status, body, headers = _get(service.url + "/v1/models")
    assert not any(c.ended.is_set() for c in calls), "the slots were free again: too slow"
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert _assert_error_shape(body)["code"] == "overloaded"
    assert _get(service.url + HEALTH_PATH)[0] == 200
    assert _get(service.url + READY_PATH)[0] == 200
    for t in holders:
        t.join(REQUEST_TIMEOUT_S + SLACK_S)
    assert results == [504] * LIMIT
    assert all(c.ended.wait(SLACK_S) for c in calls)
    assert _get(service.url + "/v1/models")[0] == 200


def test_total_deadline_counts_the_body(service: Service) -> None:
    """Time spent sending the body is part of the request's deadline: the gateway call
    gets only what is left, and the request ends with 504 at the total deadline."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=SLACK_S * 2)
    try:
        body = _speech_body(HANG + " slow body")
        conn.putrequest("POST", SPEECH)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        time.sleep(1.5)  # within the body deadline; comes off the total one
        conn.send(body)
        reply = conn.getresponse()
        status, error = reply.status, _assert_error_shape(json.loads(reply.read()))
    finally:
        conn.close()
    (call,) = service.gateway.wait_calls(HANG + " slow body", 1)
    assert status == 504 and error["type"] == "server_error"
    assert call.remaining_s is not None and 0 < call.remaining_s <= REQUEST_TIMEOUT_S - 1.0
    assert call.ended.wait(SLACK_S)


def test_stalled_reader_is_cut_and_freed(service: Service) -> None:
    """A client that starts a stream and stops reading: other clients are served meanwhile;
    at the total deadline its gateway call ends and the server lets go of its socket (an
    abort: a close would wait for it to read); its concurrency slot is free again."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", service.port))
        body = _speech_body(ENDLESS)
        sock.sendall(_head(service.port, len(body)) + body)
        sock.settimeout(SLACK_S)
        assert sock.recv(12).startswith(b"HTTP/1.1 200")  # then reads no more
        (call,) = service.gateway.wait_calls(ENDLESS, 1)
        client_port = sock.getsockname()[1]
        assert _held_by(service.pid, service.port, client_port)
        assert _get(service.url + "/v1/models")[0] == 200  # another client, served
        assert call.ended.wait(REQUEST_TIMEOUT_S + SLACK_S), "the gateway call went on"
        released = lambda: not _held_by(service.pid, service.port, client_port)  # noqa: E731
        _wait(released, timeout=CLOSE_GRACE_S + SLACK_S)
    # Both slots admit again: two stalled bodies both get 408 (a busy slot would be a 503).
    socks = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(LIMIT)]
    try:
        for s in socks:
            s.sendall(_head(service.port, 100))
        statuses = [_split(_read_until_closed(s, BODY_TIMEOUT_S + SLACK_S))[0] for s in socks]
    finally:
        for s in socks:
            s.close()
    assert statuses == [408] * LIMIT


def test_readyz_answers_from_cache(service: Service) -> None:
    """200 concurrent probes are answered from the cache, quickly, for at most one gateway
    health check per refresh interval; the cache follows the gateway's health."""
    before, start = service.health.checks, time.monotonic()
    with futures.ThreadPoolExecutor(16) as pool:
        timed = list(pool.map(lambda _: _timed_get(service.url + READY_PATH), range(200)))
    elapsed, checks = time.monotonic() - start, service.health.checks - before
    assert all(status == 200 for status, _ in timed)
    assert max(seconds for _, seconds in timed) < 5.0
    assert checks <= elapsed / READY_INTERVAL_S + 3, (checks, elapsed)
    service.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        _wait(lambda: _get(service.url + READY_PATH)[0] == 503)
    finally:
        service.health.set("", health_pb2.HealthCheckResponse.SERVING)
    _wait(lambda: _get(service.url + READY_PATH)[0] == 200)


def _timed_get(url: str) -> tuple[int, float]:
    start = time.monotonic()
    status = _get(url)[0]
    return status, time.monotonic() - start
