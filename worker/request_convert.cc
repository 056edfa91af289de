#include "worker/request_convert.h"

#include <algorithm>
#include <utility>

namespace sambay {

namespace pb = sambay::v1;

SamplingParams ToSampling(const pb::SamplingParams& s) {
  SamplingParams p;
  p.temperature = s.temperature();
  p.top_k = s.top_k();
  p.top_p = s.has_top_p() ? s.top_p() : 1.0f;
  p.min_p = s.min_p();
  p.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.0f;
  p.presence_penalty = s.presence_penalty();
  p.frequency_penalty = s.frequency_penalty();
  p.seed = s.has_seed() ? s.seed() : 0;
  return p;
}

std::vector<int32_t> ToIds(const google::protobuf::RepeatedField<uint32_t>& ids) {
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (uint32_t id : ids) out.push_back(static_cast<int32_t>(id));
  return out;
}

namespace {

int TopLogprobs(uint32_t n) { return static_cast<int>(std::min<uint32_t>(n, 1000)); }

}  // namespace

SequenceRequest FromPrefillRequest(const pb::PrefillRequest& req, std::string request_id) {
  SequenceRequest r;
  r.request_id = std::move(request_id);
  r.mode = SeqMode::kPrefillOnly;
  r.prompt = ToIds(req.token_ids());
  r.sampling = ToSampling(req.sampling());
  r.rng_draws = req.rng_draws();
  r.max_new_tokens = 1;
  r.logprobs = req.return_logprobs();
  r.top_logprobs = TopLogprobs(req.top_logprobs());
  return r;
}

absl::StatusOr<SequenceRequest> FromDecodeRequest(const pb::DecodeRequest& req,
                                                  std::string request_id) {
  SequenceRequest r;
  r.request_id = std::move(request_id);
  switch (req.source_case()) {
    case pb::DecodeRequest::kHandle:
      r.mode = SeqMode::kImported;
      r.handle = req.handle();
      r.prompt_tokens = req.prompt_tokens();
      r.history = ToIds(req.history());
      break;
    case pb::DecodeRequest::kLocalPrompt:
      r.mode = SeqMode::kLocal;
      r.prompt = ToIds(req.local_prompt().ids());
      r.rng_draws = req.rng_draws();
      break;
    default:
      return absl::InvalidArgumentError("source: set handle or local_prompt");
  }
  r.sampling = ToSampling(req.sampling());
  r.max_new_tokens = req.max_new_tokens();
  r.stop_ids = ToIds(req.stop_token_ids());
  r.logprobs = req.return_logprobs();
  r.top_logprobs = TopLogprobs(req.top_logprobs());
  return r;
}

}  // namespace sambay
