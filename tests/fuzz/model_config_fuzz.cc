// libFuzzer target: config.json parsing and validation (engine/config.h ParseModelConfig).
//
// Input: the text of a config.json. Properties of an accepted config: the derived layer
// schedule has num_layers entries, and ModelConfigToJson's text parses back to the same
// numbers and schedule.
//
// Thread-safety: single-threaded (libFuzzer).
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  auto c = ParseModelConfig(std::string(reinterpret_cast<const char*>(data), size));
  if (!c.ok()) return 0;
  if (static_cast<int64_t>(c->layers.size()) != c->num_layers) {
    fuzz::Fail("the layer schedule does not have num_layers entries");
  }
  auto again = ParseModelConfig(ModelConfigToJson(*c), "round trip");
  if (!again.ok())
    fuzz::Fail("ModelConfigToJson does not parse back: " + again.status().ToString());
  if (again->layers != c->layers || again->vocab_size != c->vocab_size ||
      again->hidden_size != c->hidden_size || again->num_heads != c->num_heads ||
      again->num_kv_heads != c->num_kv_heads || again->sliding_window != c->sliding_window ||
      again->d_state != c->d_state ||
      again->max_position_embeddings != c->max_position_embeddings) {
    fuzz::Fail("ModelConfigToJson does not round-trip");
  }
  return 0;
}
