"""Every command in README.md and docs/*.md is run, or checked, here, so docs that drift from
the code fail CI.

Every ```sh / ```bash / ```shell / ```console / ```python block carries a label on the line
right above its fence (`<!-- docs-test: ... -->`, tests/docs_blocks.py) saying what happens
to it; a block without one fails `test_every_command_block_is_labelled`, so a new block has
to decide:

- `run-against-stack`: run against one local stack this module starts (gateway, the three
  stages serving both voices, the HTTP front, each gRPC service's /metrics; real processes on
  free loopback ports), in a scratch directory whose `.venv` is the repository's and whose
  `runs/` holds the stack's telemetry, as `make serve` leaves it. Before a command runs,
  what changes is where things are:
  - the default addresses (127.0.0.1:50051-50054, :8080, the /metrics ports 9464-9467)
    become the stack's;
  - `voxline say` / `voxline voices` without `--server` get the stack's gateway (their
    default is 127.0.0.1:50051);
  - `make serve` is the stack itself: `make -n serve` is checked instead;
  - the example trace id 4bf92f3577b34da6a3ce929d0e0e4736 becomes the trace id the last
    command printed (`voxline say` on stderr, the HTTP front's `voxline-trace-id` header);
  - `aplay` is a stand-in that checks it was piped one whole WAV whose header holds the real
    sizes (what the README says `say -o -` writes).
  Shell blocks run command by command with `bash -e -o pipefail`; Python blocks as a script.
  Afterwards every WAV under `out/` must hold audio, and files the docs say are the same
  audio (the README's two `--seed 42` files) must be.
- `run`: the same, with no stack.
- `dry-run`: `make` commands too slow for this test (`make run`, `make test`, the image):
  `make -n TARGET` must succeed.
- `elsewhere TEST_FILE`: run by that test, which finds the block by its other label
  (docs/security.md's TLS recipe, `local-tls: NAME`, by tests/test_local_tls.py).
- `skip REASON`: needs what this machine does not have (a cluster, Docker, a registry, the
  network, grpcurl, 40 minutes of training); the reason is required. Its commands are still
  checked statically (`check_command`): `voxline` subcommands and flags against the CLI's
  parser; `make` targets against the Makefile; `python -m` modules exist and take the flags
  and steps given (their `--help`); kubectl's namespace, `-k` folders, `deploy/...`,
  `svc/... PORT`, HPAs, ScaledObjects, label selectors and Secrets against the rendered
  overlays; helm's `--set` names; `docker build` files and build args; image references
  against the overlays' `images:`; `docker compose` files and service names; gRPC methods
  and proto files of grpcurl/ghz against protos/. A skipped Python block must compile and its
  imports must resolve.

Commands in `inline code` that start with one of those programs get the same static checks.
And the facts the docs state about the manifests are checked against them: the number of
Deployments, the Deployment table of docs/deploy.md, the README's port table; the Grafana
guide of docs/see-it.md names every panel of the dashboard.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from docs_blocks import DOCUMENTS, ROOT, Block, blocks, inline_code  # tests/ is on sys.path
from test_k8s_manifests import _load_validator  # one loader of deploy/k8s_validate.py

from services.cli.client import synthesize
from services.cli.main import build_parser
from services.cli.stack import SERVICES, LocalStack, free_port
from services.http import DEFAULT_PORT as HTTP_PORT
from services.runtime.config import DEFAULT_PORTS

#: Fenced blocks whose language makes them commands: each needs a docs-test label.
COMMAND_LANGUAGES = {"sh", "bash", "shell", "console", "python"}
KINDS = {"run", "run-against-stack", "dry-run", "elsewhere", "skip"}
#: The trace id the docs use as an example (the W3C spec's): replaced by a real one.
EXAMPLE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_ID_PRINTED = re.compile(r"(?:trace id|voxline-trace-id:)\s+([0-9a-f]{32})", re.I)
#: /metrics ports of `voxline serve` (services/cli/main.py), as deploy/prometheus scrapes them.
SERVE_METRICS_PORTS = {"gateway": 9464, "frontend": 9465, "acoustic": 9466, "vocoder": 9467}
NAMESPACE = "voxline"
#: The overlay whose stages are sidecars of the gateway's pod (k8s/components/colocated): a
#: different topology, with its own section in docs/deploy.md ("Co-located stages"). The
#: Deployment counts, the Deployment table and the README's port table describe the others.
COLOCATED = "colocated"
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
           "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}  # fmt: skip
COMMAND_TIMEOUT_S = 180


def command_blocks() -> list[Block]:
    return [b for doc in DOCUMENTS for b in blocks(doc) if b.lang in COMMAND_LANGUAGES]


def kind_of(block: Block) -> tuple[str, str]:
    """(kind, argument) of a block's docs-test label."""
    label = block.labels.get("docs-test", "")
    kind, _, argument = label.partition(" ")
    return kind, argument.strip()


def _blocks_of(*kinds: str) -> list[Any]:
    return [pytest.param(b, id=b.where) for b in command_blocks() if kind_of(b)[0] in kinds]


# ---------------------------------------------------------------------------------------------
# Every block decides
# ---------------------------------------------------------------------------------------------


def test_every_command_block_is_labelled() -> None:
    problems = []
    for block in command_blocks():
        kind, argument = kind_of(block)
        if "docs-test" not in block.labels:
            problems.append(f"{block.where}: no <!-- docs-test: ... --> label above the block")
        elif kind not in KINDS:
            problems.append(f"{block.where}: unknown docs-test kind {kind!r} (one of {KINDS})")
        elif kind in ("skip", "elsewhere") and not argument:
            what = "a reason" if kind == "skip" else "the test file"
            problems.append(f"{block.where}: docs-test {kind} needs {what}")
    for doc in DOCUMENTS:  # commands in a block without a language would escape all this
        for block in blocks(doc):
            words = block.text.split()
            if not block.lang and words and Path(words[0]).name in {*CHECKS, "curl"}:
                problems.append(f"{block.where}: commands need a language (```sh, ```python)")
    assert not problems, "\n".join(problems)


def test_the_docs_have_command_blocks_of_every_kind() -> None:
    """The extraction works (a regex that found nothing would pass everything)."""
    kinds = {kind_of(b)[0] for b in command_blocks()}
    assert kinds == KINDS, kinds
    assert len(command_blocks()) >= 20


@pytest.mark.parametrize("block", _blocks_of("elsewhere"))
def test_blocks_run_elsewhere_are_found_there(block: Block) -> None:
    test_file = ROOT / kind_of(block)[1]
    assert test_file.is_file(), f"{block.where}: no {test_file}"
    labels = {k: v for k, v in block.labels.items() if k != "docs-test"}
    assert labels, f"{block.where}: label the block for {test_file.name} to find it"
    text = test_file.read_text()
    found = [k for k, v in labels.items() if k in text and f'"{v}"' in text]
    assert found, f"{test_file.name} never asks for {labels}"


# ---------------------------------------------------------------------------------------------
# Shell text
# ---------------------------------------------------------------------------------------------


def shell_commands(script: str) -> list[str]:
    """The script's commands, one per logical line (continuations joined), comment-only and
    blank lines left out."""
    found: list[str] = []
    current = ""
    for line in script.splitlines():
        current = f"{current}\n{line}" if current else line
        if current.rstrip().endswith("\\"):
            continue
        if current.strip() and not current.strip().startswith("#"):
            found.append(current)
        current = ""
    return found


_SHELL_WORDS = {"do", "done", "then", "fi", "else", "elif", "while", "until", "for", "if",
                "time", "exec", "export", "env", "!", "{", "}"}  # fmt: skip


def simple_commands(script: str) -> list[list[str]]:
    """The simple commands in a shell script as argument lists, for static checks: split at
    `;`, `&`, `|`, parentheses and shell keywords, leading `NAME=value` assignments dropped;
    a `$(...)` inside an argument is a script of its own. Good for the docs, not for every
    shell program."""
    tokens: list[str] = []
    for line in shell_commands(script):
        line = line.replace("\\\n", " ")
        # `<` and `>` stay in words: placeholders (`services.<name>`), not redirections.
        lexer = shlex.shlex(line, posix=True, punctuation_chars="();|&")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens += [*lexer, ";"]
        except ValueError:  # an unbalanced quote: fall back to whitespace
            tokens += [*line.split(), ";"]
    commands: list[list[str]] = []
    current: list[str] = []
    for token in [*tokens, ";"]:
        for inner in re.findall(r"\$\(([^()]*)\)", token):
            commands += simple_commands(inner)
        if token and all(c in "();|&" for c in token):
            while current and (current[0] in _SHELL_WORDS or re.match(r"^\w+=", current[0])):
                current.pop(0)
            if current and current[0] not in {"in"}:
                commands.append(current)
            current = []
        elif token != "$":
            current.append(token)
    return [c for c in commands if c and not c[0].startswith("$")]


# ---------------------------------------------------------------------------------------------
# What the static checks compare with
# ---------------------------------------------------------------------------------------------


@dataclass
class Manifests:
    """Every overlay as `kubectl kustomize` renders it."""

    overlays: dict[str, list[dict[str, Any]]]
    images: set[str] = field(default_factory=set)  #: the overlays' `images:` (name:tag)
    image_names: set[str] = field(default_factory=set)  #: what those entries replace

    def objects(self, kind: str) -> dict[str, dict[str, Any]]:
        return {
            d["metadata"]["name"]: d for docs in self.overlays.values() for d in docs
            if d.get("kind") == kind
        }  # fmt: skip

    @functools.cached_property
    def text(self) -> str:
        return "\n".join(yaml.safe_dump_all(docs) for docs in self.overlays.values())

    def voxline_deployments(self, overlay: str) -> dict[str, dict[str, Any]]:
        """The Deployments running the Voxline image, by name."""
        return {
            d["metadata"]["name"]: d
            for d in self.overlays[overlay]
            if d.get("kind") == "Deployment"
            and any(
                c["image"].split(":")[0] in {i.split(":")[0] for i in self.images}
                for c in d["spec"]["template"]["spec"]["containers"]
            )
        }


@pytest.fixture(scope="module")
def manifests() -> Manifests:
    kv = _load_validator()
    overlays = {p.name: kv.documents(kv.render(p)) for p in kv.overlays()}
    found = Manifests(overlays)
    for path in (ROOT / "k8s/overlays").glob("*/kustomization.yaml"):
        for image in yaml.safe_load(path.read_text()).get("images", []):
            found.images.add(f"{image['newName']}:{image['newTag']}")
            found.image_names.add(image["name"])
    return found


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        if match := re.match(r"^([\w./$()-][\w./$() -]*?)\s*:(?![=:])", line):
            targets.update(match.group(1).split())
    return targets


def makefile_image() -> str:
    match = re.search(r"^IMAGE \?= (\S+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert match, "no IMAGE ?= in the Makefile"
    return match.group(1)


@functools.cache
def proto_services() -> dict[str, set[str]]:
    """`voxline.v1.Service` -> its rpc names, from protos/."""
    services: dict[str, set[str]] = {}
    for proto in (ROOT / "protos").rglob("*.proto"):
        text = proto.read_text()
        package = re.search(r"^package ([\w.]+);", text, flags=re.M)
        prefix = f"{package.group(1)}." if package else ""
        for name, body in re.findall(r"service (\w+) \{(.*?)\n\}", text, flags=re.S):
            services[prefix + name] = set(re.findall(r"rpc (\w+)\s*\(", body))
    return services


@functools.cache
def module_help(module: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"python -m {module} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flag(token: str) -> str | None:
    """The option a token names (`--out=x` -> `--out`), None for values and placeholders."""
    token = token.strip("[]")
    if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", token):
        return token.split("=", 1)[0]
    return None


# ---------------------------------------------------------------------------------------------
# Static checks, one per program
# ---------------------------------------------------------------------------------------------


def check_voxline(args: list[str], manifests: Manifests) -> list[str]:
    parsers = [build_parser()]
    positional_seen = False
    for token in args:
        if _flag(token) or token.startswith("-"):
            continue
        choices = _subcommands(parsers[-1])
        if choices and not positional_seen and token in choices:
            parsers.append(choices[token])
            continue
        if len(parsers) == 1:
            return [f"voxline has no subcommand {token!r} (it has {sorted(choices)})"]
        positional_seen = True
    known = {o for p in parsers for o in p._option_string_actions}
    return [
        f"voxline {parsers[-1].prog.split(' ', 1)[-1]} has no option {flag}"
        for token in args
        if (flag := _flag(token)) and flag not in known
    ]


def check_make(args: list[str], manifests: Manifests) -> list[str]:
    targets = makefile_targets()
    return [
        f"the Makefile has no target {token!r}"
        for token in args
        if not token.startswith("-") and "=" not in token and token not in targets
    ]


def check_python(args: list[str], manifests: Manifests) -> list[str]:
    if "-m" not in args:
        scripts = [a for a in args if a.endswith(".py")]
        return [f"no file {s}" for s in scripts if not (ROOT / s).is_file()]
    index = args.index("-m")
    module, rest = args[index + 1], args[index + 2 :]
    if "<" in module:  # a placeholder: python -m services.<name>
        return []
    if importlib.util.find_spec(module) is None:
        return [f"no module {module}"]
    if module == "pytest":
        return [f"no test file {a}" for a in rest if a.endswith(".py") and not (ROOT / a).is_file()]
    if not rest:
        return []
    text = module_help(module)
    problems = [
        f"python -m {module} takes no {f}" for a in rest if (f := _flag(a)) and f not in text
    ]
    words = [a for a in rest if re.fullmatch(r"[a-z][\w-]*", a)]
    if (
        rest
        and words
        and rest[0] == words[0]
        and not re.search(rf"\b{re.escape(words[0])}\b", text)
    ):
        problems.append(f"python -m {module} has no step {words[0]!r}")
    return problems


_KUBE_KINDS = {
    "deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
    "svc": "Service", "service": "Service", "hpa": "HorizontalPodAutoscaler",
    "scaledobject": "ScaledObject", "cm": "ConfigMap", "configmap": "ConfigMap",
    "secret": "Secret",
}  # fmt: skip


def _kube_object_problem(kind: str, name: str, manifests: Manifests) -> str | None:
    if kind == "Secret":  # not shipped: it must be one the manifests use
        if not re.search(rf"\b{re.escape(name)}\b", manifests.text):
            return f"no manifest uses a Secret {name!r}"
        return None
    if kind == "HorizontalPodAutoscaler" and name.startswith("keda-hpa-"):
        kind, name = "ScaledObject", name.removeprefix("keda-hpa-")  # KEDA's HPA for it
    if name not in manifests.objects(kind):
        return f"no {kind} {name!r} in the rendered overlays"
    return None


def check_kubectl(args: list[str], manifests: Manifests) -> list[str]:
    problems = []
    for i, token in enumerate(args):
        following = args[i + 1] if i + 1 < len(args) else ""
        if token in ("-n", "--namespace") and following != NAMESPACE:
            problems.append(f"namespace {following!r}, the manifests' is {NAMESPACE!r}")
        folder = token in ("-k", "kustomize") and following and not following.startswith("-")
        if folder and not (ROOT / following / "kustomization.yaml").is_file():
            problems.append(f"{token} {following}: no kustomization.yaml there")
        if token == "namespace" and args[:1] == ["create"] and following != NAMESPACE:
            problems.append(f"namespace {following!r}, the manifests' is {NAMESPACE!r}")
        if token == "generic" and args[i - 1 : i] == ["secret"]:
            problems.append(_kube_object_problem("Secret", following, manifests) or "")
        if match := re.fullmatch(r"([a-z]+)/([\w.-]+)", token):
            kind = _KUBE_KINDS.get(match.group(1))
            if kind:
                problems.append(_kube_object_problem(kind, match.group(2), manifests) or "")
                if token.startswith("svc/") and "port-forward" in args and following:
                    service = manifests.objects("Service").get(match.group(2), {})
                    ports = {str(p["port"]) for p in service.get("spec", {}).get("ports", [])}
                    if following.split(":")[0] not in ports:
                        problems.append(f"Service {match.group(2)} has no port {following}")
        if token in ("get", "describe") and following in _KUBE_KINDS:
            name = args[i + 2] if i + 2 < len(args) else ""
            if name and not name.startswith("-"):
                problems.append(_kube_object_problem(_KUBE_KINDS[following], name, manifests) or "")
        if token == "-l" and following:
            wanted = dict(pair.split("=", 1) for pair in following.split(","))
            templates = [
                d["spec"]["template"]["metadata"].get("labels", {})
                for d in manifests.objects("Deployment").values()
            ]
            if not any(wanted.items() <= labels.items() for labels in templates):
                problems.append(f"-l {following} selects no pod of the rendered overlays")
        if token == "--raw" and "custom.metrics.k8s.io" in following:
            metric = following.rstrip("/").rsplit("/", 1)[-1]
            rules = (ROOT / "k8s/components/hpa/prometheus-adapter-config.yaml").read_text()
            if metric not in rules:
                problems.append(f"no adapter rule serves {metric}")
    return [p for p in problems if p]


def check_helm(args: list[str], manifests: Manifests) -> list[str]:
    problems = []
    for i, token in enumerate(args):
        if token != "--set" or i + 1 >= len(args):
            continue
        key, _, value = args[i + 1].partition("=")
        if key == "rules.existing" and value not in manifests.objects("ConfigMap"):
            problems.append(f"no ConfigMap {value!r} for rules.existing")
        if key == "prometheus.url":
            host = re.sub(r"^https?://", "", value).split(":")[0].split(".")
            if host[0] not in manifests.objects("Service") or host[1:2] != [NAMESPACE]:
                problems.append(f"prometheus.url {value}: no such Service in {NAMESPACE}")
        if key == "prometheus.port":
            ports = {
                str(p["port"]) for p in manifests.objects("Service")["prometheus"]["spec"]["ports"]
            }
            if value not in ports:
                problems.append(f"Service prometheus has no port {value}")
    return problems


def _image_problems(args: list[str], manifests: Manifests) -> list[str]:
    refs = [a for a in args if re.fullmatch(r"[\w.-]+\.[a-z]+/[\w./-]+:[\w.-]+", a)]
    return [f"image {r} is none the overlays deploy ({sorted(manifests.images)})"
            for r in refs if r not in manifests.images]  # fmt: skip


def check_docker(args: list[str], manifests: Manifests) -> list[str]:
    problems = _image_problems(args, manifests)
    if args[:1] == ["build"]:
        dockerfile = ROOT / (args[args.index("-f") + 1] if "-f" in args else "Dockerfile")
        if not dockerfile.is_file():
            return [*problems, f"no {dockerfile}"]
        declared = set(re.findall(r"^ARG (\w+)", dockerfile.read_text(), flags=re.M))
        for i, token in enumerate(args):
            if token == "--build-arg" and args[i + 1].split("=")[0] not in declared:
                problems.append(f"{dockerfile.name} declares no ARG {args[i + 1].split('=')[0]}")
    if args[:1] == ["compose"]:
        compose = ROOT / args[args.index("-f") + 1] if "-f" in args else None
        if compose is None or not compose.is_file():
            return [*problems, f"docker compose: no compose file {compose}"]
        services = set(yaml.safe_load(compose.read_text())["services"])
        rest = args[args.index("-f") + 2 :]
        words = [a for a in rest if not a.startswith("-")]
        for name in words[1:]:  # after the compose command (up, ps, logs, down, ...)
            if name not in services:
                problems.append(f"{compose.name} has no service {name!r}")
    return problems


def check_podman(args: list[str], manifests: Manifests) -> list[str]:
    problems = _image_problems(args, manifests)
    if args[:1] == ["push"] and args[1] != makefile_image():
        problems.append(f"podman push {args[1]}: make image builds {makefile_image()}")
    return problems


def check_kustomize(args: list[str], manifests: Manifests) -> list[str]:
    if args[:3] == ["edit", "set", "image"]:
        name = args[3].split("=")[0]
        if name not in manifests.image_names:
            return [f"the overlays' images: name {sorted(manifests.image_names)}, not {name}"]
    return []


def check_grpc_tool(args: list[str], manifests: Manifests) -> list[str]:
    """grpcurl and ghz: proto files and the services and methods named."""
    problems = []
    services = proto_services()
    imports = [args[i + 1] for i, a in enumerate(args) if a in ("-import-path", "--import-paths")]
    for i, token in enumerate(args):
        proto = args[i + 1] if token in ("-proto", "--proto") else ""
        if proto and not any((ROOT / base / proto).is_file() for base in [*imports, "."]):
            problems.append(f"no proto {proto}")
        if match := re.fullmatch(r"([\w.]+)/(\w+)", token):
            service, method = match.groups()
            if "." in service and method not in services.get(service, set()):
                problems.append(f"no rpc {service}/{method} in protos/")
        if token == "describe" and i + 1 < len(args) and args[i + 1] not in services:
            problems.append(f"no service {args[i + 1]} in protos/")
    return problems


def check_source(args: list[str], manifests: Manifests) -> list[str]:
    return [f"no file {args[0]}"] if args and not (ROOT / args[0]).is_file() else []


CHECKS: dict[str, Callable[[list[str], Manifests], list[str]]] = {
    "voxline": check_voxline,
    "make": check_make,
    "python": check_python,
    "python3": check_python,
    "kubectl": check_kubectl,
    "helm": check_helm,
    "docker": check_docker,
    "podman": check_podman,
    "kustomize": check_kustomize,
    "grpcurl": check_grpc_tool,
    "ghz": check_grpc_tool,
    ".": check_source,
    "source": check_source,
}


def check_command(argv: list[str], manifests: Manifests) -> list[str]:
    """What is wrong with one command of the docs, found without running it."""
    program = Path(argv[0]).name if argv[0] != "." else "."
    check = CHECKS.get(program)
    return check(argv[1:], manifests) if check else []


def check_script(script: str, manifests: Manifests) -> list[str]:
    return [
        f"`{' '.join(argv)}`: {problem}"
        for argv in simple_commands(script)
        for problem in check_command(argv, manifests)
    ]


def test_static_checks_catch_drift(manifests: Manifests) -> None:
    """The checks find what they are for (a check that never fails checks nothing)."""
    wrong = {
        "voxline sey hi": "no subcommand",
        "voxline say hi --sample-rat 16000": "no option --sample-rat",
        "voxline trace report --tempo http://x --sincee 1h": "no option --sincee",
        "make servee": "no target",
        "kubectl -n voxlin get pods": "namespace",
        "kubectl apply -k k8s/overlays/gpuu": "kustomization",
        "kubectl -n voxline rollout restart deploy/gatewayy": "no Deployment",
        "kubectl -n voxline port-forward svc/gateway 50052": "no port",
        "kubectl -n voxline describe hpa vocoderr": "no HorizontalPodAutoscaler",
        "kubectl -n voxline create secret generic voxline-api-tokn": "Secret",
        "kubectl -n voxline get pods -l app.kubernetes.io/name=vocodr": "selects no pod",
        "docker build -f deploy/docker/Dockerfile --build-arg RUNTME=gpu .": "no ARG",
        "docker push registry.example.com/voxline/voxline:0.0.9": "none the overlays deploy",
        "docker compose -f deploy/compose/docker-compose.yaml logs gatway": "no service",
        "grpcurl -plaintext -d '{}' h:1 voxline.v1.Synthesizer/Synthesise": "no rpc",
        "helm install a b --set rules.existing=nope": "no ConfigMap",
        "podman push voxline:9 registry.example.com/voxline/voxline:0.1.0-cpu": "make image",
        "x=$(kubectl -n other get secret voxline-api-token)": "namespace",
        "for i in $(seq 2); do (voxline say x --servr a) & done": "no option --servr",
    }
    for command, expected in wrong.items():
        problems = check_script(command, manifests)
        assert any(expected in p for p in problems), (command, problems)
    right = [
        "voxline voices import MODEL.onnx [--config MODEL.onnx.json] --out DIR",
        "VOXLINE_API_TOKEN=x .venv/bin/voxline say - -o - --api-token t | aplay",
        "kubectl -n voxline get hpa keda-hpa-vocoder -w",
        "make lock LOCK_ARGS=--upgrade",
    ]
    for command in right:
        assert check_script(command, manifests) == [], command


# ---------------------------------------------------------------------------------------------
# skip: static checks only; dry-run: make -n
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _blocks_of("skip"))
def test_skipped_blocks_are_still_right(block: Block, manifests: Manifests) -> None:
    if block.lang == "python":
        tree = ast.parse(block.text, filename=block.where)  # it must at least parse
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        exec(compile(ast.Module(imports, type_ignores=[]), block.where, "exec"), {})
        return
    problems = check_script(block.text, manifests)
    assert not problems, f"{block.where}:\n" + "\n".join(problems)


@pytest.mark.parametrize("block", _blocks_of("dry-run"))
def test_dry_run_blocks(block: Block) -> None:
    for command in shell_commands(block.text):
        argv = shlex.split(command, comments=True)
        assert argv[:1] == ["make"], f"{block.where}: dry-run is for make commands: {command}"
        done = subprocess.run(
            ["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{block.where}: make -n {argv[1:]}:\n{done.stderr}"


def test_inline_commands_are_right(manifests: Manifests) -> None:
    """`inline code` that is a command (a known program with arguments) passes the same
    static checks as a skipped block."""
    problems, checked = [], 0
    for doc in DOCUMENTS:
        for span in inline_code(doc):
            argv = span.split()
            if Path(argv[0]).name not in CHECKS or len(argv) < 2:
                continue
            checked += 1
            problems += [f"{doc.name}: `{span}`: {p}" for p in check_script(span, manifests)]
    assert checked >= 30, checked
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# run and run-against-stack
# ---------------------------------------------------------------------------------------------

APLAY = '''\
#!{python}
"""Stand-in for aplay: stdin must be one whole WAV whose header holds the real sizes."""
import io, struct, sys, wave
data = sys.stdin.buffer.read()
riff, data_size = struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[40:44])[0]
assert riff == len(data) - 8, f"RIFF size {{riff}} for {{len(data)}} bytes"
assert data_size == len(data) - 44, f"data size {{data_size}} for {{len(data)}} bytes"
with wave.open(io.BytesIO(data)) as w:
    assert w.getnframes() > 0 and len(w.readframes(w.getnframes())) == data_size
print(f"aplay stand-in: {{data_size // 2}} samples", file=sys.stderr)
'''


@dataclass
class Runner:
    """Runs the docs' blocks in a scratch directory, against `stack` if there is one."""

    workdir: Path
    stack: LocalStack | None = None
    metrics_ports: dict[str, int] = field(default_factory=dict)
    trace_id: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXLINE_")}
        path = [str(self.workdir / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")]
        env["PATH"] = os.pathsep.join(path)
        return env

    def addresses(self) -> dict[int, str]:
        """Default port -> where the stack serves it."""
        if self.stack is None:
            return {}
        found = {DEFAULT_PORTS[s]: self.stack.address(s) for s in SERVICES}
        found[HTTP_PORT] = self.stack.address("http")
        for service, port in SERVE_METRICS_PORTS.items():
            found[port] = f"127.0.0.1:{self.metrics_ports[service]}"
        return found

    def localise(self, text: str) -> str:
        addresses = self.addresses()

        def address(match: re.Match[str]) -> str:
            return addresses.get(int(match.group(2)), match.group(0))

        text = re.sub(r"\b(127\.0\.0\.1|localhost):(\d+)\b", address, text)
        if EXAMPLE_TRACE_ID in text:
            text = text.replace(EXAMPLE_TRACE_ID, self.current_trace_id())
        if self.stack is not None and "--server" not in text:
            text = re.sub(
                r"((?:\S*/)?voxline (?:say|voices))(?=\s)",
                rf"\1 --server {self.stack.gateway}",
                text,
            )
        return text

    def current_trace_id(self) -> str:
        """The trace id the last command printed; a request of its own if none did yet."""
        if self.trace_id is None:
            assert self.stack is not None, "the example trace id needs a stack"
            self.trace_id = synthesize(self.stack.gateway, "A trace to look at.").trace_id
        return self.trace_id

    def note(self, output: str) -> None:
        if ids := TRACE_ID_PRINTED.findall(output):
            self.trace_id = ids[-1]

    def run_shell(self, block: Block) -> None:
        for command in shell_commands(block.text):
            if re.match(r"\s*(make|\S*voxline) serve\b", command):
                assert self.stack is not None, f"{block.where}: `{command}` needs a stack"
                done = subprocess.run(["make", "-n", "serve"], cwd=ROOT, capture_output=True)
                assert done.returncode == 0, done.stderr
                continue
            local = self.localise(command)
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", local],
                cwd=self.workdir, env=self.env, capture_output=True, text=True,
                timeout=COMMAND_TIMEOUT_S,
            )  # fmt: skip
            self.log.append(f"$ {local}\n{done.stdout}{done.stderr}")
            assert done.returncode == 0, (
                f"{block.where}: exit status {done.returncode}\n$ {local}\n"
                f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
            )
            self.note(done.stdout + done.stderr)

    def run_python(self, block: Block) -> None:
        script = self.workdir / f"snippet_{block.path.stem}_{block.line}.py"
        script.write_text(self.localise(block.text))
        done = subprocess.run(
            [sys.executable, script.name], cwd=self.workdir, env=self.env,
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"{block.where}: exit status {done.returncode}\n{script.read_text()}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )
        self.note(done.stdout + done.stderr)

    def run(self, block: Block) -> None:
        (self.run_python if block.lang == "python" else self.run_shell)(block)
        self.check_outputs(block)

    def check_outputs(self, block: Block) -> None:
        for path in sorted((self.workdir / "out").glob("**/*.wav")):
            with wave.open(str(path)) as w:
                frames = w.readframes(w.getnframes())
            assert frames, f"{block.where}: {path.name} holds no audio"
        # "same seed, same audio": the files a block writes with the same --seed and text.
        said: dict[tuple[str, str], list[Path]] = {}
        for command in shell_commands(block.text) if block.lang != "python" else []:
            seed = re.search(r"--seed (\d+)", command)
            text = re.search(r'say "([^"]+)"', command)
            out = re.search(r"-o (\S+\.wav)", command)
            if seed and text and out:
                said.setdefault((seed.group(1), text.group(1)), []).append(self.workdir / out[1])
        for paths in said.values():
            audio = {p.name: _frames(p) for p in paths}
            assert len(set(audio.values())) == 1, f"{block.where}: not the same audio: {audio}"


def _frames(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def _workdir(path: Path) -> Path:
    (path / ".venv").symlink_to(ROOT / ".venv")
    (path / "protos").symlink_to(ROOT / "protos")
    (path / "out").mkdir()
    (path / "bin").mkdir()
    aplay = path / "bin" / "aplay"
    aplay.write_text(APLAY.format(python=sys.executable))
    aplay.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def docs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """The local stack the docs' commands run against, as `make serve` runs it: every voice,
    the HTTP front, /metrics on each gRPC service; spans exported within ~0.2 s."""
    workdir = _workdir(tmp_path_factory.mktemp("docs-stack"))
    metrics = {s: free_port() for s in SERVE_METRICS_PORTS}
    stack = LocalStack(
        workdir / "runs" / "docs-test",
        env={"VOXLINE_VOICES": "all", "OTEL_BSP_SCHEDULE_DELAY": "200"},
        extra_args={s: ["--prometheus-port", str(p)] for s, p in metrics.items()},
        http=True,
    )
    with stack:
        yield Runner(workdir, stack, metrics)


@pytest.mark.parametrize("block", _blocks_of("run-against-stack"))
def test_run_against_stack(block: Block, docs_stack: Runner) -> None:
    docs_stack.run(block)


@pytest.mark.parametrize("block", _blocks_of("run"))
def test_run(block: Block, tmp_path: Path) -> None:
    Runner(_workdir(tmp_path)).run(block)


def test_localise_rewrites_addresses_ids_and_servers(docs_stack: Runner) -> None:
    stack = docs_stack.stack
    assert stack is not None
    docs_stack.trace_id = "0" * 32
    text = docs_stack.localise(
        f".venv/bin/voxline say - -o - | aplay; voxline trace {EXAMPLE_TRACE_ID}; "
        "curl http://127.0.0.1:8080/v1/models http://127.0.0.1:9467/metrics"
    )
    assert f"voxline say --server {stack.gateway} - -o -" in text
    assert f"voxline trace {'0' * 32}" in text
    assert f"http://{stack.address('http')}/v1/models" in text
    assert f"http://127.0.0.1:{docs_stack.metrics_ports['vocoder']}/metrics" in text
    docs_stack.trace_id = None


# ---------------------------------------------------------------------------------------------
# What the docs say about the manifests, the ports and the dashboard
# ---------------------------------------------------------------------------------------------


def _docs_text() -> str:
    return "\n".join(doc.read_text() for doc in DOCUMENTS)


def _number(word: str) -> int:
    return int(word) if word.isdigit() else NUMBERS[word.lower()]


def test_the_deployment_counts_the_docs_state_match_the_overlays(manifests: Manifests) -> None:
    text = " ".join(_docs_text().split())
    number = rf"(\d+|{'|'.join(NUMBERS)})"
    voxline_claims = re.findall(rf"\b{number} Voxline Deployments\b", text, flags=re.I)
    total_claims = re.findall(rf"\brenders {number} Deployments\b", text, flags=re.I)
    assert voxline_claims and total_claims, "the docs no longer say how many Deployments"
    for overlay, docs in manifests.overlays.items():
        if overlay == COLOCATED:  # two Voxline Deployments there: its own section says so
            continue
        voxline = len(manifests.voxline_deployments(overlay))
        total = sum(d.get("kind") == "Deployment" for d in docs)
        for claim in voxline_claims:
            assert _number(claim) == voxline, f"{claim} Voxline Deployments? {overlay}: {voxline}"
        for claim in total_claims:
            assert _number(claim) == total, f"renders {claim} Deployments? {overlay}: {total}"


def _table(text: str, header: str) -> list[list[str]]:
    """The rows (cells stripped) of the Markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _container_ports(deployment: dict[str, Any]) -> set[int]:
    return {
        p["containerPort"]
        for c in deployment["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }


def test_deploy_md_deployment_table_matches_the_overlays(manifests: Manifests) -> None:
    rows = _table((ROOT / "docs/deploy.md").read_text(), "| Deployment | port |")
    table = {row[0]: int(row[1]) for row in rows}
    for overlay in manifests.overlays:
        if overlay == COLOCATED:  # no stage Deployment there (docs/deploy.md, its own section)
            continue
        deployments = manifests.voxline_deployments(overlay)
        assert set(table) == set(deployments), overlay
        for name, port in table.items():
            assert port in _container_ports(deployments[name]), (overlay, name, port)


def test_readme_port_table(manifests: Manifests) -> None:
    """The README's ports: the services' defaults, the /metrics ports `voxline serve` gives
    them (those deploy/prometheus scrapes), every container port of the manifests."""
    rows = _table((ROOT / "README.md").read_text(), "| service ")
    table = {row[0]: row for row in rows}
    assert set(table) == {*DEFAULT_PORTS, "http"}
    targets = json.loads((ROOT / "deploy/prometheus/targets/voxline-local.json").read_text())
    scraped = {t["labels"]["service"]: int(t["targets"][0].split(":")[1]) for t in targets}
    assert scraped == SERVE_METRICS_PORTS
    serve = (ROOT / "services/cli/main.py").read_text()  # what `voxline serve` passes
    assert all(f'"{s}": {p}' in serve for s, p in SERVE_METRICS_PORTS.items())
    for service, (_, port, metrics, in_k8s, _serves) in table.items():
        assert int(port) == (HTTP_PORT if service == "http" else DEFAULT_PORTS[service]), service
        expected = str(SERVE_METRICS_PORTS[service]) if service in SERVE_METRICS_PORTS else "–"
        assert metrics == expected, service
        for overlay in manifests.overlays:
            if overlay == COLOCATED:  # one pod, other ports (docs/deploy.md, its own section)
                continue
            deployed = _container_ports(manifests.voxline_deployments(overlay)[service])
            stated = {int(n) for n in re.findall(r"\b\d{4,5}\b", in_k8s)}
            assert stated == deployed, (overlay, service, stated, deployed)


def test_see_it_names_every_dashboard_panel() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/voxline.json").read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    guide = (ROOT / "docs/see-it.md").read_text()
    missing = [p["title"] for p in panels(dashboard["panels"]) if p["title"] not in guide]
    assert not missing, f"docs/see-it.md does not describe: {missing}"
    assert dashboard["uid"] in guide and dashboard["title"] in guide


def test_readme_links_the_walkthrough() -> None:
    assert "docs/see-it.md" in (ROOT / "README.md").read_text()


def test_shell_helpers() -> None:
    script = textwrap.dedent(
        """\
        make run    # a comment
                    # its continuation
        curl -sS http://x \\
          -d '{"a": 1}' | grep -i trace
        export T="$(kubectl -n voxline get secret s -o jsonpath='{.data.token}' | base64 -d)"
        """
    )
    assert shell_commands(script) == [
        "make run    # a comment",
        "curl -sS http://x \\\n  -d '{\"a\": 1}' | grep -i trace",
        script.splitlines()[4],
    ]
    commands = simple_commands(script)
    assert ["make", "run"] in commands
    assert ["grep", "-i", "trace"] in commands
    assert ["kubectl", "-n", "voxline", "get", "secret", "s", "-o", "jsonpath={.data.token}"] in (
        commands
    )
