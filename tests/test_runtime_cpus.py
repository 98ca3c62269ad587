"""Thread counts follow the container's CPU limit (cgroup quota), not the host's cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.runtime.cpus import available_cpus, torch_threads

HOST = len(os.sched_getaffinity(0))


def _v2(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: int, period: int) -> Path:
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100000 100000\n", 1), ("50000 100000\n", 1), ("150000 100000\n", 1), ("max 100000\n", HOST)],
)
def test_cgroup_v2_quota(tmp_path: Path, text: str, expected: int) -> None:
    assert available_cpus(_v2(tmp_path, text)) == min(expected, HOST)


@pytest.mark.parametrize(("quota", "expected"), [(100000, 1), (250000, 2), (-1, HOST)])
def test_cgroup_v1_quota(tmp_path: Path, quota: int, expected: int) -> None:
    assert available_cpus(_v1(tmp_path, quota, 100000)) == min(expected, HOST)


def test_quota_above_affinity_is_capped(tmp_path: Path) -> None:
    assert available_cpus(_v2(tmp_path, f"{(HOST + 8) * 100000} 100000")) == HOST


def test_no_cgroup_files_means_affinity(tmp_path: Path) -> None:
    assert available_cpus(tmp_path) == HOST


def test_explicit_threads_win() -> None:
    assert torch_threads(3) == 3
    assert torch_threads(0) == available_cpus()
