#!/usr/bin/env bash
# Podman as this project uses it on machines without a Docker engine (see docs/deploy.md,
# "Building the image without Docker"): runc with cgroupfs (crun cannot run in a hybrid
# cgroup hierarchy here) and a containers.conf that drops default ulimits (setrlimit is not
# permitted inside these VMs). Every make target that calls podman goes through this file.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
exec podman --runtime runc --cgroup-manager cgroupfs "$@"
