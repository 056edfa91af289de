#!/usr/bin/env bash
# Builds the CUDA binaries on this (GPU-less) machine and packs them for the device machine into
# carry/gpu/ (git-ignored), which a `run` call carries (docs/gpu.md):
#   carry/gpu/bin/      cuda_tests, sambay-gpu-bench, sambay-mkmodel, and for the GPU worker test
#                       worker_tests, sambay-worker (+ its CUDA plugin libsambay_worker_cuda.so),
#                       sambay-run (stripped)
#   carry/gpu/models/tiny   the bundled tiny model (worker_tests finds it beside bin/)
#   carry/gpu/libs.tar.xz   the shared libraries they need that are not glibc, the CUDA toolkit
#                           or the driver (Abseil, Highway, OpenBLAS, libgfortran, libstdc++ ...)
#   carry/gpu/MANIFEST      what was packed, from which commit, the sizes
# The CUDA libraries (cudart, cuBLAS/cuBLASLt, NCCL) are far too large to carry (~760 MB): the
# device image has them; scripts/gpu-check.sh finds them there. NCCL is loaded at run time
# (engine/tp/nccl_loader.h): without it only the NCCL tests skip.
# Fails if carry/gpu/ would exceed the 60 MiB budget (the limit for the whole tree is 64 MiB).
# Environment: BUILD_DIR (default build-gpu), JOBS (default 2), CARRY_DIR (default carry/gpu;
# scripts/test.sh packs into build/carry-gpu for the CI dry run). Arguments go to CMake.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-2}
BINS=(cuda_tests sambay-gpu-bench sambay-mkmodel worker_tests sambay-worker sambay-run)
CARRY_DIR=${CARRY_DIR:-carry/gpu}
PLUGIN=libsambay_worker_cuda.so  # built with sambay-worker; loaded beside it (--device cuda)

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DSAMBAY_CUDA=ON \
  -DSAMBAY_WERROR=ON "$@"
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${BINS[@]}" tiny_model

rm -rf "$CARRY_DIR"
mkdir -p "$CARRY_DIR/bin"
for b in "${BINS[@]}" "$PLUGIN"; do
  cp "$BUILD_DIR/bin/$b" "$CARRY_DIR/bin/"
  strip --strip-unneeded "$CARRY_DIR/bin/$b"
done
mkdir -p "$CARRY_DIR/models"
cp -r "$BUILD_DIR/models/tiny" "$CARRY_DIR/models/"

# Shared libraries: everything ldd resolves except glibc's own, the dynamic loader, the CUDA
# toolkit (/usr/local/cuda*) and the driver (libcuda). libstdc++ and libgcc_s go to compat/:
# the device's newer ones are preferred (tools like compute-sanitizer need them); gpu-check.sh
# puts compat/ first only if the binaries do not start without it.
libdir=$(mktemp -d)
trap 'rm -rf "$libdir"' EXIT
mkdir -p "$libdir/compat"
for b in "${BINS[@]}" "$PLUGIN"; do
  ldd "$BUILD_DIR/bin/$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do
  name=$(basename "$lib")
  case "$lib" in
    /usr/local/cuda*) continue ;;
  esac
  case "$name" in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*|libcuda.so.*) continue ;;
  esac
  case "$name" in
    libstdc++.so.*|libgcc_s.so.*) cp -L "$lib" "$libdir/compat/$name" ;;
    *) cp -L "$lib" "$libdir/$name" ;;
  esac
done
tar -C "$libdir" -cJf "$CARRY_DIR/libs.tar.xz" .

{
  echo "packed: $(date -u '+%Y-%m-%d %H:%M UTC') from $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "build: $BUILD_DIR ($(grep -E '^SAMBAY_CUDA_ARCHITECTURES' "$BUILD_DIR/CMakeCache.txt" || true))"
  echo "binaries:"; ls -l "$CARRY_DIR/bin" | tail -n +2
  echo "libraries (libs.tar.xz):"; (cd "$libdir" && find . -type f | sort)
} > "$CARRY_DIR/MANIFEST"

size=$(du -sb "$CARRY_DIR" | cut -f1)
echo "$CARRY_DIR: $((size / 1024 / 1024)) MiB"
if (( size > 60 * 1024 * 1024 )); then
  echo "error: $CARRY_DIR is over the 60 MiB budget (the whole carried tree may be 64 MiB)" >&2
  exit 1
fi
tree_size=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "working tree that travels: $((tree_size / 1024 / 1024)) MiB + $CARRY_DIR $((size / 1024 / 1024)) MiB (limit 64 MiB)"
if (( tree_size + size > 64 * 1024 * 1024 )); then
  echo "error: the working tree plus $CARRY_DIR exceed 64 MiB" >&2
  exit 1
fi
