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
std::string RequestIdFor(const grpc::ServerContextBase& ctx, const pb::GenerateRequest& req) {
  if (!req.request_id().empty()) return req.request_id();
  auto it = ctx.client_metadata().find("x-request-id");
  if (it != ctx.client_metadata().end()) {
    const absl::string_view v(it->second.data(), it->second.size());
    if (IsValidRequestId(v)) return std::string(v);
  }
  return NewRequestId();
}

Preparation PrepareWith(const pb::GenerateRequest& request, const Tokenizer& tokenizer,
                        const RouterLimits& limits, std::string rid, uint64_t seed) {
  Preparation p{std::move(rid), PrepareRequest(request, tokenizer, limits, seed)};
  if (p.request.ok()) p.request->request_id = p.request_id;
  return p;
}

}  // namespace

Preparation RequestPreparer::Prepare(const grpc::ServerContextBase& ctx,
                                     const pb::GenerateRequest& request) const {
  std::string rid = RequestIdFor(ctx, request);
  return PrepareWith(request, tokenizer_, limits_, std::move(rid), RandomU64());
}

bool RequestPreparer::PrepareLater(const grpc::ServerContextBase& ctx,
                                   const pb::GenerateRequest& request,
                                   std::function<void(Preparation)> done) {
  std::string rid = RequestIdFor(ctx, request);
  const uint64_t seed = RandomU64();
  return pool_.TrySubmit([this, &request, rid = std::move(rid), seed, done = std::move(done)] {
    done(PrepareWith(request, tokenizer_, limits_, rid, seed));
  });
}

}  // namespace sambay
