"""How many CPUs this process may really use: the container's CPU limit, not the host's.

A pod limited to 2 CPUs on a 64-core node that starts 64 torch threads spends its quota in a
few milliseconds and is throttled for the rest of each period; with OpenMP threads spinning
(the default wait policy) it is worse still. So thread counts derive from the cgroup CPU
quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`), capped by the CPU
affinity mask, which is what `docker run --cpus`, compose `cpus:` and Kubernetes
`resources.limits.cpu` set.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _quota(root: Path) -> float | None:
    """CPUs granted by the cgroup quota of this process, or None when unlimited/unknown."""
    try:
        fields = (root / "cpu.max").read_text().split()  # v2: "<quota|max> <period>"
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(root: Path = CGROUP) -> int:
    """Whole CPUs this process can use: min(affinity, cgroup quota rounded down), at least 1."""
    cpus = len(os.sched_getaffinity(0))
    quota = _quota(root)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def torch_threads(requested: int) -> int:
    """`--torch-threads`: a positive number as given; 0 (the default) = `available_cpus()`."""
    return requested if requested > 0 else available_cpus()
