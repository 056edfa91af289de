// libFuzzer target: the worker's request validation: protobuf bytes -> sambay.v1.PrefillRequest
// or DecodeRequest -> SequenceRequest -> Scheduler::Validate (worker/scheduler.h).
//
// The handlers' own conversion (worker/request_convert.h: FromPrefillRequest,
// FromDecodeRequest), then Scheduler::Validate, the smallest library function that is callable
// without a server. Input: [selector byte][serialized request]; the
// selector's bit 0 picks PrefillRequest (0) or DecodeRequest (1). Model: the tiny model
// (fuzz::TinyModelDir()), with a scheduler of the worker's default options (context 4096).
// Properties of an accepted request: ids in the vocabulary, and the sequence's state memory
// (StateBytesFor prompt + max_new_tokens) is finite and positive.
//
// Thread-safety: single-threaded (libFuzzer); the scheduler's engine thread stays idle.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/model.h"
#include "sambay/v1/worker.pb.h"
#include "tests/fuzz/fuzz_util.h"
#include "worker/metrics.h"
#include "worker/request_convert.h"
#include "worker/scheduler.h"

namespace {

namespace pb = sambay::v1;

struct WorkerSetup {
  std::unique_ptr<sambay::Model> model;
  std::unique_ptr<sambay::WorkerMetrics> metrics;
  std::unique_ptr<sambay::Scheduler> scheduler;
};

const WorkerSetup& Setup() {
  using namespace sambay;
  static const WorkerSetup* setup = [] {
    auto* s = new WorkerSetup();
    auto model = Model::Load(fuzz::TinyModelDir());
    if (!model.ok()) fuzz::Fail("cannot load the tiny model: " + model.status().ToString());
    s->model = *std::move(model);
    s->metrics = std::make_unique<WorkerMetrics>(s->model->fingerprint(), "both", "fuzz");
    SchedulerOptions o;
    o.max_context = s->model->config().max_position_embeddings;
    o.state_budget_bytes = int64_t{256} << 20;
    s->scheduler = std::make_unique<Scheduler>(*s->model, o, s->metrics.get());
    return s;
  }();
  return *setup;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  Setup();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  if (size < 1) return 0;
  const WorkerSetup& setup = Setup();
  SequenceRequest r;
  if ((data[0] & 1) == 0) {
    pb::PrefillRequest req;
    if (!req.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
    r = FromPrefillRequest(req, req.request_id());
  } else {
    pb::DecodeRequest req;
    if (!req.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
    auto converted = FromDecodeRequest(req, req.request_id());
    if (!converted.ok()) return 0;  // the handler refuses it before validation
    r = *std::move(converted);
  }
  const absl::Status st = setup.scheduler->Validate(r);
  if (!st.ok()) {
    if (st.code() != absl::StatusCode::kInvalidArgument) {
      fuzz::Fail("Validate failed with a code other than INVALID_ARGUMENT: " + st.ToString());
    }
    return 0;
  }
  const int64_t vocab = setup.model->config().vocab_size;
  for (const std::vector<int32_t>* ids : {&r.prompt, &r.history, &r.stop_ids}) {
    for (int32_t id : *ids) {
      if (id < 0 || id >= vocab) fuzz::Fail("Validate accepted an out-of-vocabulary id");
    }
  }
  const int64_t tokens =
      (r.mode == SeqMode::kImported ? r.prompt_tokens + 1 : static_cast<int64_t>(r.prompt.size())) +
      r.max_new_tokens;
  const int64_t bytes = setup.scheduler->StateBytesFor(tokens);
  if (bytes <= 0) fuzz::Fail("StateBytesFor an accepted request is not positive");
  return 0;
}
