#!/usr/bin/env bash
# Installs the Debian packages paraserve needs to build and test — a C++ toolchain and cmake
# for the native addon, python3 for the reference scripts, systemd for `systemd-analyze
# verify` of the unit files, OpenStack Swift with memcached and curl for the S3-compatible
# server of the s3:// tests (scripts/s3-server.sh) — on Debian 12 with Node 20 already
# present. Idempotent: installs only what is missing and runs `apt-get update` at most once;
# uses sudo unless run as root. Installing starts no services: scripts/s3-server.sh runs
# Swift on its own ports, and the stock proxy would take 8080, the gateway's port.
set -euo pipefail

packages=(cmake g++ make python3 systemd swift swift-proxy swift-account swift-container swift-object memcached curl)

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

# One root shell installs with a policy-rc.d that answers 101, so the packages' scripts
# start no services, and puts back whatever policy was there before, however apt-get ends.
# PARASERVE_POLICY_RC_D names another policy file (tests).
install_without_services='
policy=$1; shift
saved=""
if [ -e "$policy" ]; then saved=$(mktemp) && cp -p "$policy" "$saved"; fi
trap '"'"'if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi'"'"' EXIT
printf "#!/bin/sh\nexit 101\n" >"$policy" && chmod 755 "$policy"
apt-get update -q && apt-get install -y -q --no-install-recommends "$@"
'

echo "setup-debian: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive bash -c "$install_without_services" setup-debian \
  "${PARASERVE_POLICY_RC_D:-/usr/sbin/policy-rc.d}" "${missing[@]}"
