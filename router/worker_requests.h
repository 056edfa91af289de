// The requests the router sends to its workers for one attempt of a Generate request (flow.h),
// built from the prepared request and the tokens generated so far. An attempt after a failure
// re-prefills prompt + generated with rng_draws = generated.size(), so the sampler's random
// stream continues where it stopped.
//
// Pure functions of their arguments (no state, thread-safe).
#ifndef SAMBAY_ROUTER_WORKER_REQUESTS_H_
#define SAMBAY_ROUTER_WORKER_REQUESTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "router/request.h"
#include "sambay/v1/worker.pb.h"

namespace sambay {

// In place (one worker prefills and decodes): Decode with local_prompt = prompt + generated.
sambay::v1::DecodeRequest InPlaceDecodeRequest(const PreparedRequest& req,
                                               const std::vector<int32_t>& generated);

// Split, step 1: reserve a slot on the decode worker for the state the prefill will push to
// `handle`. prompt_tokens = prompt + generated; the history (for penalties) only when a
// repetition, presence or frequency penalty applies; max_new_tokens = what remains minus the
// prefill's one token (at least 1).
sambay::v1::DecodeRequest ReserveDecodeRequest(const PreparedRequest& req,
                                               const std::vector<int32_t>& generated,
                                               const std::string& handle);

// Split, step 2: prefill prompt + generated, pushing the state to {decode_worker, handle}; with
// an empty handle (no reservation: the first token is the last one), no destination.
sambay::v1::PrefillRequest SplitPrefillRequest(const PreparedRequest& req,
                                               const std::vector<int32_t>& generated,
                                               const std::string& decode_worker,
                                               const std::string& handle);

}  // namespace sambay

#endif  // SAMBAY_ROUTER_WORKER_REQUESTS_H_
