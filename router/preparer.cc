#include "router/preparer.h"

#include <random>
#include <utility>

#include "common/request_id.h"

namespace sambay {
namespace {

namespace pb = sambay::v1;

uint64_t RandomU64() {
  thread_local std::mt19937_64 gen(std::random_device{}());
  return gen();
}

// The request's id: its request_id field (validated with the request), else a valid
// x-request-id header, else a new one. A header gRPC would refuse to send on (TAB, DEL, bytes
// >= 0x80) is replaced, never copied into the worker calls (common/request_id.h).
std::string RequestIdFor(absl::string_view header_id, const pb::GenerateRequest& req) {
  if (!req.request_id().empty()) return req.request_id();
  if (!header_id.empty() && IsValidRequestId(header_id)) return std::string(header_id);
  return NewRequestId();
}

Preparation PrepareWith(const pb::GenerateRequest& request, const Tokenizer& tokenizer,
                        const RouterLimits& limits, std::string rid, uint64_t seed) {
  Preparation p{std::move(rid), PrepareRequest(request, tokenizer, limits, seed)};
  if (p.request.ok()) p.request->request_id = p.request_id;
  return p;
}

}  // namespace

Preparation RequestPreparer::Prepare(absl::string_view header_id,
                                     const pb::GenerateRequest& request) const {
  std::string rid = RequestIdFor(header_id, request);
  return PrepareWith(request, tokenizer_, limits_, std::move(rid), RandomU64());
}

bool RequestPreparer::PrepareLater(absl::string_view header_id, const pb::GenerateRequest& request,
                                   std::function<void(Preparation)> done) {
  std::string rid = RequestIdFor(header_id, request);
  const uint64_t seed = RandomU64();
  return pool_.TrySubmit([this, &request, rid = std::move(rid), seed, done = std::move(done)] {
    done(PrepareWith(request, tokenizer_, limits_, rid, seed));
  });
}

}  // namespace sambay
