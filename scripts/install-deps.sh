#!/usr/bin/env bash
# Installs every Debian package sambay-serve needs to build, test and run.
# Usage (as root on Debian 12): bash scripts/install-deps.sh
# Idempotent: packages already present are left alone.
set -euo pipefail

PACKAGES=(
  build-essential g++ cmake ninja-build git pkg-config ca-certificates
  libabsl-dev nlohmann-json3-dev libopenblas-dev libhwy-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-numpy
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"
