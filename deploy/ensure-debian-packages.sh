#!/usr/bin/env bash
# Make sure the Debian packages named in the arguments are installed, for `make test`
# (prometheus) and `make image` (podman, mmdebstrap, runc).
#   ensure-tools.sh PACKAGE:COMMAND [PACKAGE:COMMAND ...]
# Installs missing packages with apt-get when running as root or with passwordless sudo;
# otherwise stops at once with one line naming what to install.
set -euo pipefail
missing=()
for spec in "$@"; do
  command -v "${spec#*:}" >/dev/null 2>&1 || missing+=("${spec%%:*}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
# De-duplicate (one package may provide several commands).
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "error: missing Debian package(s): ${missing[*]} — install with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian package(s): ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
