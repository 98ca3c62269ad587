#!/usr/bin/env bash
# Build the local Debian bookworm base image (no registry needed): mmdebstrap a minimal root
# filesystem and import it into podman as $BASE (default localhost/debian-base:bookworm).
# Skipped when the image already exists. Used by `make image` where no registry base can be
# pulled; with a registry, build the Dockerfile with its default BASE_IMAGE instead.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
base="${BASE:-localhost/debian-base:bookworm}"
if "$here/podman.sh" image exists "$base"; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "building base image $base with mmdebstrap (about 30 s)" >&2
mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$tmp/rootfs.tar"
"$here/podman.sh" import "$tmp/rootfs.tar" "$base" >/dev/null
