// The worker's public requests (sambay.v1 PrefillRequest, DecodeRequest) as the scheduler's
// SequenceRequest: the one field mapping, used by the gRPC handlers (worker/service.cc) and by
// the request-validation fuzzer (tests/fuzz/worker_request_fuzz.cc). Validation itself is the
// scheduler's (Scheduler::Validate); these functions only copy and apply the API's defaults.
//
// Stateless functions; thread-safe.
#ifndef SAMBAY_WORKER_REQUEST_CONVERT_H_
#define SAMBAY_WORKER_REQUEST_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sampler.h"
#include "sambay/v1/worker.pb.h"
#include "worker/sequence.h"

namespace sambay {

// The API's defaults: unset top_p and repetition_penalty are 1.0 (off), unset seed is 0.
SamplingParams ToSampling(const sambay::v1::SamplingParams& s);

// Ids above INT32_MAX become negative, which validation rejects as out of vocabulary.
std::vector<int32_t> ToIds(const google::protobuf::RepeatedField<uint32_t>& ids);

// A Prefill: mode kPrefillOnly, one new token.
SequenceRequest FromPrefillRequest(const sambay::v1::PrefillRequest& req, std::string request_id);

// A Decode: kImported (source handle) or kLocal (source local_prompt); INVALID_ARGUMENT naming
// `source` when neither is set. The caller checks that its roles allow the mode.
absl::StatusOr<SequenceRequest> FromDecodeRequest(const sambay::v1::DecodeRequest& req,
                                                  std::string request_id);

}  // namespace sambay

#endif  // SAMBAY_WORKER_REQUEST_CONVERT_H_
