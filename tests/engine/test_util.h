// Shared helpers for engine tests: temp dirs, model creation, error measures.
#ifndef SAMBAY_TESTS_ENGINE_TEST_UTIL_H_
#define SAMBAY_TESTS_ENGINE_TEST_UTIL_H_

#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "engine/model.h"
#include "gtest/gtest.h"
#include "tools/model_maker.h"

namespace sambay::testing {

// A new directory under the gtest temp dir named <prefix>XXXXXX ("" on failure); the caller
// removes it.
inline std::string MakeTempDirPath(const std::string& prefix) {
  std::string tmpl = ::testing::TempDir();
  if (tmpl.empty() || tmpl.back() != '/') tmpl += '/';
  tmpl += prefix + "XXXXXX";
  return mkdtemp(tmpl.data()) == nullptr ? "" : tmpl;
}

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A fresh directory under the gtest temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() : path_(MakeTempDirPath("sambay_")) {}
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

#ifdef SAMBAY_BIN_DIR
// Runs `SAMBAY_BIN_DIR/<args>` through the shell with stdout and stderr captured in `tmp`.
struct RunResult {
  int exit_code = -1;
  std::string out, err;
};
inline RunResult RunTool(const std::string& args, const TempDir& tmp) {
  const std::string out = tmp.Sub("stdout.txt"), err = tmp.Sub("stderr.txt");
  const std::string cmd = std::string(SAMBAY_BIN_DIR) + "/" + args + " >" + out + " 2>" + err;
  const int rc = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
  r.out = ReadFileBytes(out);
  r.err = ReadFileBytes(err);
  return r;
}
#endif  // SAMBAY_BIN_DIR

// ||a - b|| / ||b|| over n values.
inline double RelErr(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Makes a model from the tiny preset with optional overrides and loads it.
struct TinyModel {
  TempDir dir;
  std::unique_ptr<Model> model;
};

inline std::unique_ptr<TinyModel> MakeTiny(uint64_t seed, DType dtype = DType::kF32, int layers = 8,
                                           int shards = 1, int threads = 2) {
  auto t = std::make_unique<TinyModel>();
  auto config = PresetConfig("tiny");
  EXPECT_TRUE(config.ok());
  config->num_layers = layers;
  MakeModelOptions o;
  o.seed = seed;
  o.dtype = dtype;
  o.shards = shards;
  absl::Status st = MakeModel(t->dir.path(), *config, o);
  EXPECT_TRUE(st.ok()) << st;
  ModelOptions mo;
  mo.num_threads = threads;
  auto m = Model::Load(t->dir.path(), mo);
  EXPECT_TRUE(m.ok()) << m.status();
  if (m.ok()) t->model = std::move(*m);
  return t;
}

// Deterministic pseudo-random ids in [0, vocab).
inline std::vector<int32_t> RandomIds(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(n);
  uint64_t x = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (auto& id : ids) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    id = static_cast<int32_t>((x >> 33) % static_cast<uint64_t>(vocab));
  }
  return ids;
}

// The tiny preset with 16 heads / 8 KV heads (4 differential-attention KV pairs): a model that
// splits over 1, 2 and 4 tensor-parallel ranks (not 3).
inline ModelConfig TpTestConfig() {
  ModelConfig c = *PresetConfig("tiny");
  c.num_heads = 16;
  c.num_kv_heads = 8;
  EXPECT_TRUE(FinalizeModelConfig(c).ok());
  return c;
}

}  // namespace sambay::testing

#endif  // SAMBAY_TESTS_ENGINE_TEST_UTIL_H_
