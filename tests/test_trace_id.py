"""Every response names its trace: gRPC initial metadata (`voxline-trace-id`, `traceresponse`)
and the HTTP `traceresponse` header, equal to the ids of the spans the services write.

Against the real local stack (`stack`: four processes writing OTLP/JSON lines to its run
directory) and a real `python -m services.http` in front of its gateway.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.stack import LocalStack, free_port, wait_http_ready
from services.http import READY_PATH
from telemetry import flatten_spans, names, read_otlp_json_lines

SERVER = 2
#: Trace Context Level 2: version 00, trace id, the server span's id, flags (sampled 0x01,
#: random 0x02: the SDK's ids are random).
TRACE_RESPONSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
#: The services export every ~5 s, each on its own clock; a loaded machine adds to that.
EXPORT_WAIT_S = 60.0


def spans_of(run_dir: Path, trace_id: str) -> list[dict[str, Any]]:
    spans = []
    for path in sorted(run_dir.glob("*.traces.jsonl")):
        spans += [s for s in flatten_spans(read_otlp_json_lines(path)) if s["trace_id"] == trace_id]
    return spans


def wait_for_span(
    run_dir: Path, trace_id: str, found: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first span of ``trace_id`` in ``run_dir`` for which ``found`` holds, once exported."""
    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        match = [s for s in spans_of(run_dir, trace_id) if found(s)]
        if match:
            return match[0]
        assert time.monotonic() < deadline, f"no such span of {trace_id} in {run_dir}"
        time.sleep(0.5)


def ids_in(metadata: Any) -> tuple[str, str]:
    """(trace id, span id) a response's metadata names; both keys must agree."""
    got = dict(metadata or ())
    match = TRACE_RESPONSE.fullmatch(got.get(names.TRACE_RESPONSE_KEY, ""))
    assert match, got
    assert got.get(names.TRACE_ID_RESPONSE_KEY) == match.group(1)
    assert int(match.group(3), 16) & 1  # sampled: the trace is recorded
    return match.group(1), match.group(2)


def test_grpc_responses_carry_the_trace_id_of_their_server_span(
    stack: LocalStack, synthesizer: synthesizer_pb2_grpc.SynthesizerStub
) -> None:
    request = pb.SynthesizeRequest(text="Which trace was this?", request_id="trace-id-unary")
    reply, call = synthesizer.Synthesize.with_call(request, timeout=60)
    unary = ids_in(call.initial_metadata())

    stream = synthesizer.SynthesizeStream(pb.SynthesizeRequest(text="And this one?"), timeout=60)
    chunks = list(stream)
    streamed = ids_in(stream.initial_metadata())
    stream_request_id = chunks[0].request_id  # made up by the gateway

    with pytest.raises(grpc.RpcError) as refused:
        synthesizer.Synthesize(pb.SynthesizeRequest(text="Too fast.", speaking_rate=9), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    failed = ids_in(refused.value.initial_metadata())  # errors name their trace too

    _, voices = synthesizer.ListVoices.with_call(pb.ListVoicesRequest(), timeout=30)
    listed = ids_in(voices.initial_metadata())
    assert len({unary[0], streamed[0], failed[0], listed[0]}) == 4

    # The ids are those of the gateway's server span in the files the services wrote.
    cases = [
        (unary, "/voxline.v1.Synthesizer/Synthesize", "trace-id-unary"),
        (streamed, "/voxline.v1.Synthesizer/SynthesizeStream", stream_request_id),
        (failed, "/voxline.v1.Synthesizer/Synthesize", None),
        (listed, "/voxline.v1.Synthesizer/ListVoices", None),
    ]
    for (trace_id, span_id), name, request_id in cases:
        span = wait_for_span(stack.run_dir, trace_id, lambda s, sid=span_id: s["span_id"] == sid)
        assert span["name"] == name and span["kind"] == SERVER
        assert span["resource"]["service.name"] == "gateway"
        assert span["attributes"].get(names.ATTR_REQUEST_ID) == request_id
    assert reply.request_id == "trace-id-unary"
    # The stages took part in the same trace.
    stages = wait_for_span(
        stack.run_dir, unary[0], lambda s: s["resource"]["service.name"] == "vocoder"
    )
    assert stages["trace_id"] == unary[0]


@pytest.fixture(scope="module")
def http_url(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m services.http` in front of the stack's gateway, writing its spans to the
    stack's run directory."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("http-trace-id") / "http.log"
    cmd = [sys.executable, "-m", "services.http", "--port", str(port)]
    cmd += ["--gateway-address", stack.gateway, "--run-dir", str(stack.run_dir)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(url + READY_PATH, 60, proc)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log_path.read_text()


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_http_responses_carry_a_w3c_traceresponse(stack: LocalStack, http_url: str) -> None:
    speech = http_url + "/v1/audio/speech"
    status, headers, audio = _post(
        speech, {"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "wav"}
    )
    assert status == 200 and audio[:4] == b"RIFF"
    headers = {k.lower(): v for k, v in headers.items()}
    ok = ids_in(headers.items())
    bad_status, bad_headers, _ = _post(speech, {"model": "tts-1", "voice": "alloy", "input": ""})
    assert bad_status == 400
    bad = ids_in({k.lower(): v for k, v in bad_headers.items()}.items())
    assert ok[0] != bad[0]
    for trace_id, span_id in (ok, bad):
        span = wait_for_span(stack.run_dir, trace_id, lambda s, sid=span_id: s["span_id"] == sid)
        assert span["kind"] == SERVER and span["resource"]["service.name"] == "http"
        assert span["name"] == "POST /v1/audio/speech"
    # The gateway's span of the successful one is in the same trace, under the HTTP span.
    gateway = wait_for_span(
        stack.run_dir, ok[0], lambda s: s["name"] == "/voxline.v1.Synthesizer/SynthesizeStream"
    )
    assert gateway["resource"]["service.name"] == "gateway"
