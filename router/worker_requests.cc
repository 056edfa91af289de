#include "router/worker_requests.h"

#include <algorithm>

namespace sambay {

namespace pb = sambay::v1;

pb::DecodeRequest InPlaceDecodeRequest(const PreparedRequest& req,
                                       const std::vector<int32_t>& generated) {
  pb::DecodeRequest dr;
  dr.set_request_id(req.request_id);
  auto* ids = dr.mutable_local_prompt()->mutable_ids();
  ids->Add(req.prompt.begin(), req.prompt.end());
  ids->Add(generated.begin(), generated.end());
  dr.set_rng_draws(generated.size());
  *dr.mutable_sampling() = req.sampling;
  dr.set_max_new_tokens(static_cast<uint32_t>(req.max_new_tokens - generated.size()));
  dr.mutable_stop_token_ids()->Add(req.stop_ids.begin(), req.stop_ids.end());
  dr.set_return_logprobs(req.logprobs);
  dr.set_top_logprobs(static_cast<uint32_t>(req.top_logprobs));
  return dr;
}

pb::DecodeRequest ReserveDecodeRequest(const PreparedRequest& req,
                                       const std::vector<int32_t>& generated,
                                       const std::string& handle) {
  const int64_t remaining = req.max_new_tokens - static_cast<int64_t>(generated.size());
  const bool penalties =
      (req.sampling.has_repetition_penalty() && req.sampling.repetition_penalty() != 1.0f) ||
      req.sampling.presence_penalty() != 0.0f || req.sampling.frequency_penalty() != 0.0f;
  pb::DecodeRequest dr;
  dr.set_request_id(req.request_id);
  dr.set_handle(handle);
  dr.set_prompt_tokens(static_cast<uint32_t>(req.prompt.size() + generated.size()));
  *dr.mutable_sampling() = req.sampling;
  if (penalties) {
    dr.mutable_history()->Add(req.prompt.begin(), req.prompt.end());
    dr.mutable_history()->Add(generated.begin(), generated.end());
  }
  // The prefill emits one token; the decode worker the rest.
  dr.set_max_new_tokens(static_cast<uint32_t>(std::max<int64_t>(1, remaining - 1)));
  dr.mutable_stop_token_ids()->Add(req.stop_ids.begin(), req.stop_ids.end());
  dr.set_return_logprobs(req.logprobs);
  dr.set_top_logprobs(static_cast<uint32_t>(req.top_logprobs));
  return dr;
}

pb::PrefillRequest SplitPrefillRequest(const PreparedRequest& req,
                                       const std::vector<int32_t>& generated,
                                       const std::string& decode_worker,
                                       const std::string& handle) {
  pb::PrefillRequest pr;
  pr.set_request_id(req.request_id);
  pr.mutable_token_ids()->Add(req.prompt.begin(), req.prompt.end());
  pr.mutable_token_ids()->Add(generated.begin(), generated.end());
  *pr.mutable_sampling() = req.sampling;
  pr.set_rng_draws(generated.size());
  if (!handle.empty()) {
    pr.mutable_destination()->set_address(decode_worker);
    pr.mutable_destination()->set_handle(handle);
  }
  pr.set_return_logprobs(req.logprobs);
  pr.set_top_logprobs(static_cast<uint32_t>(req.top_logprobs));
  return pr;
}

}  // namespace sambay
