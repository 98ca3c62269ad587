"""Gateway admission control: bounded slots, a short FIFO wait, immediate refusal with a
retry hint (services/gateway/admission.py), and the same through the real gateway."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from voxline.v1 import synthesizer_pb2 as pb
from voxline.v1 import synthesizer_pb2_grpc

from services.cli.stack import LocalStack
from services.gateway.admission import RETRY_PUSHBACK_KEY, Admission, AdmissionConfig, Overloaded


def test_slots_then_refusal_at_once_with_a_retry_hint() -> None:
    admission = Admission(AdmissionConfig(max_active=2, max_waiting=0, max_wait_s=1.0))
    with admission.slot(), admission.slot():
        assert admission.active == 2
        t0 = time.monotonic()
        with pytest.raises(Overloaded) as info, admission.slot():
            pass
        assert time.monotonic() - t0 < 0.01
    assert admission.active == 0
    key, value = info.value.trailers[0]
    assert key == RETRY_PUSHBACK_KEY and int(value) > 0
    assert "at capacity (2 syntheses running, 0 waiting)" in str(info.value)


def test_a_waiter_gets_the_next_free_slot_in_order() -> None:
    admission = Admission(AdmissionConfig(max_active=1, max_waiting=2, max_wait_s=5.0))
    order: list[int] = []
    release = threading.Event()

    def holder() -> None:
        with admission.slot():
            release.wait()

    def waiter(i: int) -> None:
        with admission.slot():
            order.append(i)

    first = threading.Thread(target=holder)
    first.start()
    while admission.active < 1:
        time.sleep(0.001)
    waiters = []
    for i in range(2):
        waiters.append(threading.Thread(target=waiter, args=(i,)))
        waiters[-1].start()
        while admission.waiting < i + 1:
            time.sleep(0.001)
    with pytest.raises(Overloaded), admission.slot():  # the waiting line is full: at once
        pass
    release.set()
    for t in (first, *waiters):
        t.join(5)
    assert order == [0, 1]
    assert admission.active == 0 and admission.waiting == 0


def test_wait_is_bounded_by_max_wait_and_deadline_and_caller() -> None:
    admission = Admission(AdmissionConfig(max_active=1, max_waiting=4, max_wait_s=0.2))
    with admission.slot():
        for deadline, is_active, bound in (
            (None, lambda: True, 0.2),
            (time.monotonic() + 0.05, lambda: True, 0.05),
            (None, lambda: False, 0.0),
        ):
            t0 = time.monotonic()
            with pytest.raises(Overloaded), admission.slot(deadline, is_active):
                pass
            assert time.monotonic() - t0 < bound + 0.1
        assert admission.waiting == 0


@pytest.fixture(scope="module")
def small_gateway(tmp_path_factory) -> LocalStack:
    args = {
        "gateway": ["--max-active", "2", "--max-waiting", "1", "--max-admission-wait-ms", "200"]
    }
    with LocalStack(tmp_path_factory.mktemp("admission"), extra_args=args) as stack:
        yield stack


def test_overload_is_refused_fast_and_admitted_streams_complete(small_gateway: LocalStack) -> None:
    """4x the configured capacity at once: the excess gets RESOURCE_EXHAUSTED with a retry
    hint quickly; every admitted stream completes (none lost)."""
    text = "Admission control keeps the admitted streams fast."
    results: list[tuple[str, float, dict[str, str]]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def caller() -> None:
        with grpc.insecure_channel(small_gateway.gateway) as channel:
            stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
            start.wait()
            t0 = time.monotonic()
            call = stub.SynthesizeStream(pb.SynthesizeRequest(text=text), timeout=120)
            try:
                chunks = list(call)
                outcome = "ok" if chunks else "empty"
            except grpc.RpcError as exc:
                outcome = exc.code().name
            trailers = dict(call.trailing_metadata() or ())
            with lock:
                results.append((outcome, time.monotonic() - t0, trailers))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    outcomes = [r[0] for r in results]
    assert set(outcomes) <= {"ok", "RESOURCE_EXHAUSTED"}, outcomes
    # 2 running; the waiter gets a slot only if one frees within its 200 ms.
    assert outcomes.count("ok") >= 2, outcomes
    refused = [r for r in results if r[0] == "RESOURCE_EXHAUSTED"]
    assert refused, outcomes
    # Refusals come at once or after the 200 ms wait, never after queueing behind streams.
    assert max(r[1] for r in refused) < 1.0, [round(r[1], 3) for r in refused]
    assert all(int(r[2][RETRY_PUSHBACK_KEY]) > 0 for r in refused)
    # Still serving afterwards.
    with grpc.insecure_channel(small_gateway.gateway) as channel:
        stub = synthesizer_pb2_grpc.SynthesizerStub(channel)
        assert stub.Synthesize(pb.SynthesizeRequest(text="After."), timeout=60).duration_seconds
