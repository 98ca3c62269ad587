"""Copy the observability configs into k8s/ so `kubectl apply -k` can read them.

kustomize's default load restrictor (the one `kubectl apply -k` uses) only reads files in or
below a kustomization's folder. The collector config, Prometheus config and rules, and the
Grafana provisioning and dashboards have one source of truth elsewhere in the repository
(collector-config/, deploy/prometheus/, deploy/grafana/: compose and the config tests use
them there); this script copies them into k8s/observability/files/, where the
configMapGenerators read them. Never edit the copies.

Usage:
    python deploy/k8s_config.py          # write the copies (make k8s-config)
    python deploy/k8s_config.py --check  # exit 1 naming every stale or missing copy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "k8s" / "observability" / "files"


def sources() -> dict[str, Path]:
    """Name in k8s/observability/files/ -> source file. Every Grafana dashboard is included."""
    prometheus, grafana = ROOT / "deploy" / "prometheus", ROOT / "deploy" / "grafana"
    named = {
        "otelcol.yaml": ROOT / "collector-config" / "otelcol.yaml",
        "prometheus.yml": prometheus / "prometheus-k8s.yml",
        "voxline-recording.yml": prometheus / "rules" / "voxline-recording.yml",
        "voxline-alerts.yml": prometheus / "rules" / "voxline-alerts.yml",
        "datasources.yaml": grafana / "provisioning" / "datasources" / "datasources.yaml",
        "dashboards.yaml": grafana / "provisioning" / "dashboards" / "dashboards.yaml",
    }
    for dashboard in sorted((grafana / "dashboards").glob("*.json")):
        named[dashboard.name] = dashboard
    return named


def stale() -> list[str]:
    """Copies that differ from their source, are missing, or have no source any more."""
    wanted = sources()
    problems = [
        f"{FILES / name} differs from {src}"
        for name, src in wanted.items()
        if not (FILES / name).is_file() or (FILES / name).read_bytes() != src.read_bytes()
    ]
    present = {p.name for p in FILES.glob("*")} if FILES.is_dir() else set()
    problems += [f"{FILES / name} has no source" for name in sorted(present - wanted.keys())]
    return problems


def write() -> None:
    """Replace k8s/observability/files/ with fresh copies of every source."""
    FILES.mkdir(parents=True, exist_ok=True)
    wanted = sources()
    for path in FILES.glob("*"):
        if path.name not in wanted:
            path.unlink()
    for name, src in wanted.items():
        (FILES / name).write_bytes(src.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale copies")
    args = parser.parse_args(argv)
    if not args.check:
        write()
        return 0
    problems = stale()
    for problem in problems:
        print(f"error: {problem} (run `make k8s-config`)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
