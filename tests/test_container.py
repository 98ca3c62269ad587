"""The service image, run as users deploy it: four containers, one per service.

`make container-test` (after `make image`) runs this module: each service starts from the
built image with the image's own entry point and environment (only addresses, ports and the
collector endpoint are set, as compose and Kubernetes set them), on loopback with host
networking. Checks: gRPC health, the trained voice reported by ListVoices with the weight
hashes the repository ships, intelligible speech through the gateway (pocketsphinx WER, as in
tests/test_voice_quality.py), a non-root process, telemetry exported over OTLP from every
container, torch threads following a container CPU limit, and SIGTERM stopping each
container cleanly (exit 0) within its grace period.

Needs podman (deploy/container/podman.sh) and the image ($VOXLINE_IMAGE, default
voxline:0.1.0-cpu); deselected from the plain pytest run by the `container` marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from voxline.v1 import stage_pb2, stage_pb2_grpc

from services.cli.client import list_voices, synthesize
from services.cli.stack import STAGES, free_port, wait_serving
from services.frontend.normalize import normalize
from services.runtime.voice import VOICE_NAME
from services.voices.catalog import JOE_VOICE
from telemetry.otlp_receiver import OtlpReceiver
from training.asr import ASR_RATE, Recognizer, wer
from training.corpus import HELD_OUT

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
PODMAN = str(ROOT / "deploy" / "container" / "podman.sh")
IMAGE = os.environ.get("VOXLINE_IMAGE", "voxline:0.1.0-cpu")
SHIPPED = ROOT / "services" / "voices" / VOICE_NAME
#: The Kubernetes stages' terminationGracePeriodSeconds (k8s/base); SIGTERM must end sooner.
GRACE_S = 40
#: Same bound as tests/test_voice_quality.py, on fewer sentences.
MAX_MEAN_WER = 0.30
#: The vocoder container gets this CPU limit; its torch threads must follow it.
VOCODER_CPUS = 1


def podman(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def logs(name: str, tail: int | None = None) -> str:
    """A container's output (the services log JSON lines to stderr)."""
    args = [PODMAN, "logs", *(["--tail", str(tail)] if tail else []), name]
    return subprocess.run(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False
    ).stdout


@dataclass
class Deployment:
    """The four running containers: service -> (container name, loopback address)."""

    names: dict[str, str]
    addresses: dict[str, str]
    telemetry: OtlpReceiver

    @property
    def gateway(self) -> str:
        return self.addresses["gateway"]


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    exists = subprocess.run([PODMAN, "image", "exists", IMAGE], capture_output=True, timeout=30)
    assert exists.returncode == 0, f"image {IMAGE} not found: run `make image` first"
    run_id = uuid.uuid4().hex[:8]
    ports = {s: free_port() for s in (*STAGES, "gateway")}
    addresses = {s: f"127.0.0.1:{p}" for s, p in ports.items()}
    names = {s: f"voxline-test-{s}-{run_id}" for s in ports}
    with OtlpReceiver(http=False) as telemetry:
        started: list[str] = []
        try:
            for service, port in ports.items():
                env = {
                    "VOXLINE_HOST": "127.0.0.1",
                    "VOXLINE_PORT": str(port),
                    "OTEL_EXPORTER_OTLP_ENDPOINT": telemetry.endpoint,
                    "OTEL_METRIC_EXPORT_INTERVAL": "2000",
                    "OTEL_BSP_SCHEDULE_DELAY": "500",
                }
                if service == "gateway":
                    env |= {f"VOXLINE_{s.upper()}_ADDRESS": addresses[s] for s in STAGES}
                limits = ["--cpus", str(VOCODER_CPUS)] if service == "vocoder" else []
                # The gateway runs the image's default command; stages pick theirs, as k8s does.
                command = [] if service == "gateway" else ["python", "-m", f"services.{service}"]
                flags = [f"--env={k}={v}" for k, v in env.items()]
                podman("run", "-d", "--network=host", "--name", names[service], *limits,
                       *flags, IMAGE, *command)  # fmt: skip
                started.append(names[service])
            for service, address in addresses.items():
                try:
                    wait_serving(address, 240)
                except Exception as exc:
                    tail = logs(names[service], 30)
                    raise AssertionError(f"{service} not serving: {exc}\n{tail}") from None
            yield Deployment(names, addresses, telemetry)
        finally:
            for name in started:
                subprocess.run([PODMAN, "rm", "-f", "-t", "0", name], capture_output=True)


def test_trained_voices_and_shipped_weights(deployment: Deployment) -> None:
    """Both voices, the student the default on a CPU, with the weights the checkout has: the
    student's committed files, and the joe voice converted at build time exactly as
    `make voices` converts it here (the importer is deterministic)."""
    reply = list_voices(deployment.gateway)
    voices = {v.name: v for v in reply.voices}
    assert reply.default_voice == VOICE_NAME and set(voices) == {JOE_VOICE, VOICE_NAME}
    assert all(v.trained for v in voices.values())
    for name in voices:
        config = json.loads((SHIPPED.parent / name / "config.json").read_text())
        for stage in ("frontend", "acoustic"):
            assert voices[name].weights_sha256[stage] == config[stage]["sha256"], (name, stage)
    for stage in ("frontend", "acoustic"):
        with grpc.insecure_channel(deployment.addresses[stage]) as channel:
            info = stage_pb2_grpc.StageInfoStub(channel).GetModelInfo(
                stage_pb2.GetModelInfoRequest(), timeout=10
            )
        models = {m.voice: m for m in info.voice_models}
        student = json.loads((SHIPPED / "config.json").read_text())
        assert models[VOICE_NAME].weights_sha256 == student[stage]["sha256"], stage
        assert models[JOE_VOICE].architecture == "vits", stage


def test_speech_is_intelligible(deployment: Deployment) -> None:
    asr = Recognizer()
    rates = []
    for text in HELD_OUT[:4]:
        result = synthesize(deployment.gateway, text, sample_rate=ASR_RATE, timeout=120)
        transcript = asr.transcribe(np.frombuffer(result.pcm, dtype="<i2"))
        rates.append(wer(normalize(text), transcript))
    assert float(np.mean(rates)) <= MAX_MEAN_WER, rates
    streamed = synthesize(deployment.gateway, HELD_OUT[0], stream=True, sample_rate=ASR_RATE)
    assert streamed.duration_s > 0.5


def test_processes_run_as_non_root(deployment: Deployment) -> None:
    for service, name in deployment.names.items():
        status = podman("exec", name, "cat", "/proc/1/status")
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {"10001"}, (service, uids)


def test_every_container_exports_telemetry(deployment: Deployment) -> None:
    synthesize(deployment.gateway, "Telemetry leaves the container.", timeout=120)

    def services_seen(rx: OtlpReceiver) -> set[str] | None:
        seen = {s["resource"].get("service.name") for s in rx.spans()}
        metered = {m["resource"].get("service.name") for m in rx.metrics()}
        wanted = set(deployment.names)
        return seen & metered if wanted <= seen & metered else None

    assert deployment.telemetry.wait_for(services_seen, timeout=30)


def test_torch_threads_follow_the_cpu_limit(deployment: Deployment) -> None:
    output = logs(deployment.names["vocoder"])
    ready = [json.loads(line) for line in output.splitlines() if '"model ready"' in line]
    assert ready and ready[0]["torch_threads"] == VOCODER_CPUS, output[-2000:]


def test_sigterm_stops_each_container_cleanly(deployment: Deployment) -> None:
    # Last in this module: it stops the deployment. Gateway first, as a rollout would.
    for service in ("gateway", *STAGES):
        name = deployment.names[service]
        t0 = time.monotonic()
        podman("stop", "-t", str(GRACE_S), name, timeout=GRACE_S + 30)
        elapsed = time.monotonic() - t0
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name)
        # 137 would mean SIGKILL after the grace period.
        assert code == "0", (service, code, logs(name, 20))
        assert elapsed < GRACE_S, (service, elapsed)
