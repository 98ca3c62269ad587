"""The trained voice travels with the installed package, wherever it is installed.

The project is installed *non-editably* (a real wheel build) into a throwaway folder, and a
stage is started from there with the working directory outside the source tree: it must load
the shipped weights (trained, expected sha256) from the installed copy, never from the
checkout. A stage asked for the shipped voice that cannot find it must refuse to start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import grpc
import pytest
from conftest import running_service
from voxline.v1 import stage_pb2, stage_pb2_grpc

from services.cli.stack import free_port
from services.runtime.voice import VOICE_NAME

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "services" / "voices" / VOICE_NAME


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install --no-deps .` (not editable) into a fresh folder; returns that folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return target


def _env(site: Path, **extra: str) -> dict[str, str]:
    # The installed copy comes first on sys.path; third-party dependencies still come from
    # this interpreter's environment. VOXLINE_MODEL_DIR must not leak in from the caller.
    env = {k: v for k, v in os.environ.items() if k != "VOXLINE_MODEL_DIR"}
    return {**env, "PYTHONPATH": str(site), "OMP_WAIT_POLICY": "PASSIVE", **extra}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory outside the source tree (nothing to find by accident)."""
    return tmp_path


def _start(
    stage: str, site: Path, cwd: Path, *args: str, **env: str
) -> AbstractContextManager[str]:
    return running_service(
        stage, "--run-dir", str(cwd / "runs"), *args, env=_env(site, **env), cwd=cwd
    )


def _model_info(address: str) -> stage_pb2.ModelInfo:
    with grpc.insecure_channel(address) as channel:
        return stage_pb2_grpc.StageInfoStub(channel).GetModelInfo(
            stage_pb2.GetModelInfoRequest(), timeout=10
        )


def test_wheel_carries_the_voice(installed: Path) -> None:
    shipped = sorted(p.name for p in SHIPPED.iterdir() if p.is_file())
    copied = sorted(p.name for p in (installed / "services" / "voices" / VOICE_NAME).iterdir())
    assert copied == shipped


@pytest.mark.parametrize("stage", ["frontend", "acoustic"])
def test_installed_stage_serves_the_trained_voice(
    installed: Path, workdir: Path, stage: str
) -> None:
    expected = json.loads((SHIPPED / "config.json").read_text())[stage]["sha256"]
    with _start(stage, installed, workdir) as address:
        info = _model_info(address)
        assert info.trained
        assert info.weights_sha256 == expected
        # Loaded from the installed copy, not from the checkout.
        assert info.weights_source.startswith(str(installed)), info.weights_source


def test_model_dir_override(installed: Path, workdir: Path) -> None:
    """VOXLINE_MODEL_DIR points at a folder of voices published apart from the package."""
    voices = workdir / "volume"
    (voices / VOICE_NAME).mkdir(parents=True)
    for name in ("config.json", "acoustic.safetensors"):
        (voices / VOICE_NAME / name).write_bytes((SHIPPED / name).read_bytes())
    with _start("acoustic", installed, workdir, VOXLINE_MODEL_DIR=str(voices)) as address:
        info = _model_info(address)
        assert info.trained and info.weights_source.startswith(str(voices))


def _failed_start(stage: str, site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"services.{stage}", "--port", str(free_port())],
        cwd=cwd, env=_env(site, **env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_missing_voice_fails_to_start(installed: Path, workdir: Path) -> None:
    empty = workdir / "empty"
    empty.mkdir()
    done = _failed_start("frontend", installed, workdir, VOXLINE_MODEL_DIR=str(empty))
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert "not found" in message and str(empty) in message and "VOXLINE_MODEL_DIR" in message
    assert "Traceback" not in done.stderr


def test_corrupted_weights_fail_to_start(installed: Path, workdir: Path) -> None:
    voices = workdir / "volume"
    (voices / VOICE_NAME).mkdir(parents=True)
    (voices / VOICE_NAME / "config.json").write_bytes((SHIPPED / "config.json").read_bytes())
    # What a clone without Git LFS would hold: a small text pointer instead of the weights.
    (voices / VOICE_NAME / "frontend.safetensors").write_text("version https://git-lfs...\n")
    done = _failed_start("frontend", installed, workdir, VOXLINE_MODEL_DIR=str(voices))
    assert done.returncode != 0
    assert "sha256" in done.stderr and "Traceback" not in done.stderr
