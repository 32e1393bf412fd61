#!/usr/bin/env bash
# Installs the Debian packages paraserve needs to build and test — a C++ toolchain and cmake
# for the native addon, python3 for the reference scripts, systemd for `systemd-analyze
# verify` of the unit files — on Debian 12 with Node 20 already present. Idempotent: installs
# only what is missing and runs `apt-get update` at most once; uses sudo unless run as root.
set -euo pipefail

packages=(cmake g++ make python3 systemd)

if ! command -v node >/dev/null 2>&1; then
  echo "setup-debian: Node.js 20 or newer is required (https://nodejs.org/en/download)" >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "setup-debian: Node.js 20 or newer is required; found $(node --version)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup-debian: ${packages[*]} already installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "setup-debian: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

echo "setup-debian: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
