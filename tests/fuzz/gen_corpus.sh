#!/usr/bin/env bash
# Regenerates the generated seeds of tests/fuzz/corpus/ (fuzz_seedgen, tests/fuzz/seedgen.cc)
# from a -DSAMBAY_FUZZ=ON build: engine-written states, safetensors files and checkpoints,
# configs, small vocabularies, tokenizer directories (the tiny model's), texts from
# tests/data/tokenizer/corpus.json and serialized requests. Inputs that fuzzing found and that
# were added by hand (named regress_*) are kept. Usage: BUILD_DIR=build-asan tests/fuzz/gen_corpus.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build-asan}
cmake --build "$BUILD_DIR" --target fuzz_seedgen tiny_model
"$BUILD_DIR/bin/fuzz_seedgen" tests/fuzz/corpus tests/data/tokenizer/corpus.json
du -sh tests/fuzz/corpus
