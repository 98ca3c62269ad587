#!/usr/bin/env bash
# `make image`: build the CPU service image from deploy/docker/Dockerfile with podman, on a
# machine without a Docker engine or registry access (checked on Debian bookworm, as root).
#
#   IMAGE  image name (default voxline:0.1.0-cpu)
#   BASE   base image (default localhost/debian-base:bookworm, made by base-image.sh)
#
# The host's own pip settings (`pip config list`: index, extra indexes, find-links, CA bundle)
# are passed to the build as build arguments, and every local path they name is mounted
# read-only at the same place, so the image installs exactly what the host would (the torch
# CPU wheel from local disk included) and nothing about this machine is written into the repo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/deploy/container"
image="${IMAGE:-voxline:0.1.0-cpu}"
export BASE="${BASE:-localhost/debian-base:bookworm}"

"$root/deploy/ensure-debian-packages.sh" podman:podman mmdebstrap:mmdebstrap runc:runc
"$here/base-image.sh"

args=(--build-arg "BASE_IMAGE=$BASE")
mounts=()
# "global.find-links='/opt/wheels'" -> PIP_FIND_LINKS=/opt/wheels (later scopes win).
declare -A pip_settings=()
while IFS= read -r line; do
  key="${line%%=*}"; key="${key##*.}"; value="${line#*=}"; value="${value//\'/}"
  pip_settings[$key]="$value"
done < <(python3 -m pip config list 2>/dev/null || true)
for key in index-url extra-index-url find-links cert; do
  value="${pip_settings[$key]:-}"
  [ -n "$value" ] || continue
  var="PIP_$(echo "$key" | tr 'a-z-' 'A-Z_')"
  args+=(--build-arg "$var=$value")
  for item in $value; do
    path="${item#file://}"
    [ -e "$path" ] || continue
    # A local index (".../simple") links to its files beside it: mount the folder above.
    case "$key" in *index-url) path="$(dirname "$path")" ;; esac
    mounts+=(-v "$path:$path:ro")
  done
done
# torch's own index is the host's index too (the CPU wheel then comes from find-links).
args+=(--build-arg "TORCH_INDEX_URL=${pip_settings[index-url]:-https://pypi.org/simple}")

echo "building $image (base $BASE)" >&2
start=$(date +%s)
"$here/podman.sh" build --format docker --network=host --ignorefile "$root/deploy/docker/Dockerfile.dockerignore" \
  -f "$root/deploy/docker/Dockerfile" -t "$image" "${args[@]}" "${mounts[@]}" "$root"
echo "built $image in $(( $(date +%s) - start )) s" >&2
