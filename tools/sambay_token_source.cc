// sambay-token-source: a benchmark fixture that speaks the worker API (sambay.v1.Worker) and
// streams synthetic tokens at a fixed decode-step rate, so that sambay-router can be loaded far
// beyond what real CPU workers on the same machine produce. It runs no model: it exists only to
// measure the router's own cost per streamed token (docs/benchmarks.md, "Router overhead").
//
// Decode with local_prompt: one token per `--step-us` microseconds (all streams step together,
// like a worker's batched decode step), ids (sum(prompt) + i) % --vocab, then DecodeDone
// (LENGTH). A token that finds the previous message still unsent joins the next message.
// GetInfo: roles prefill+decode (so the router places requests in place on it), the given
// fingerprint and limits. GetLoad: running = open streams. Prefill and PushState are not served
// (UNIMPLEMENTED): split placement needs real workers.
//
// One completion-queue thread does all streaming; GetInfo/GetLoad are synchronous.
#include <grpcpp/alarm.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_context.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/server_util.h"
#include "sambay/v1/worker.grpc.pb.h"

namespace sambay {
namespace {

struct Flags {
  std::string host = "127.0.0.1";
  int64_t port = 0;
  std::string port_file;
  int64_t step_us = 1000;
  int64_t vocab = 320;
  std::string fingerprint = "token-source";
  int64_t max_running = 4096;
};
Flags flags;

namespace pb = sambay::v1;
using Base = pb::Worker::WithAsyncMethod_Decode<pb::Worker::Service>;

class TokenSource final : public Base {
 public:
  grpc::Status GetInfo(grpc::ServerContext*, const pb::GetInfoRequest*,
                       pb::WorkerInfo* info) override {
    info->set_fingerprint(flags.fingerprint);
    info->set_model_type("token-source");
    info->set_vocab_size(flags.vocab);
    info->add_roles("prefill");
    info->add_roles("decode");
    info->set_tp_size(1);
    info->set_max_running(flags.max_running);
    info->set_max_context_tokens(1 << 20);
    info->set_state_bytes_total(uint64_t{1} << 40);
    return grpc::Status::OK;
  }
  grpc::Status GetLoad(grpc::ServerContext*, const pb::GetLoadRequest*,
                       pb::WorkerLoad* load) override {
    const int64_t running = running_.load();
    load->set_running(static_cast<uint32_t>(running));
    load->set_free_slots(static_cast<uint32_t>(std::max<int64_t>(0, flags.max_running - running)));
    load->set_state_bytes_total(uint64_t{1} << 40);
    load->set_free_kv_blocks(uint64_t{1} << 20);
    return grpc::Status::OK;
  }

  // Runs the completion queue until it shuts down.
  void Serve(grpc::ServerCompletionQueue* cq) {
    cq_ = cq;
    Accept();
    step_.Set(cq_, Next(), &step_tag_);
    void* tag = nullptr;
    bool ok = false;
    while (cq_->Next(&tag, &ok)) {
      if (tag == &step_tag_) {
        if (!ok) continue;  // shutting down
        Step();
        step_.Set(cq_, Next(), &step_tag_);
        continue;
      }
      Tag* t = static_cast<Tag*>(tag);
      Handle(t->stream, t->kind, ok);
    }
  }

 private:
  enum Kind { kAccept, kWrite, kFinish, kDone };
  struct Stream;
  struct Tag {
    Stream* stream;
    Kind kind;
  };
  struct Stream {
    grpc::ServerContext ctx;
    pb::DecodeRequest req;
    grpc::ServerAsyncWriter<pb::DecodeResponse> writer{&ctx};
    pb::DecodeResponse msg;
    Tag accept{this, kAccept}, write{this, kWrite}, finish{this, kFinish}, done{this, kDone};
    std::list<Stream*>::iterator pos;
    uint64_t base = 0;
    uint32_t max = 0, produced = 0, sent = 0;
    int pending = 0;  // tags outstanding
    bool writing = false, ended = false, finishing = false, live = false;
  };

  std::chrono::system_clock::time_point Next() {
    next_step_ += std::chrono::microseconds(flags.step_us);
    const auto now = std::chrono::system_clock::now();
    if (next_step_ < now) next_step_ = now;
    return next_step_;
  }

  void Accept() {
    Stream* s = new Stream;
    s->ctx.AsyncNotifyWhenDone(&s->done);
    s->pending = 1;
    RequestDecode(&s->ctx, &s->req, &s->writer, cq_, cq_, &s->accept);
  }

  void Handle(Stream* s, Kind kind, bool ok) {
    --s->pending;
    switch (kind) {
      case kAccept:
        if (!ok) {
          delete s;
          return;
        }
        Accept();
        ++s->pending;  // the done tag
        if (!s->req.has_local_prompt()) {
          Finish(s, grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                                 "the token source serves Decode with local_prompt only"));
          break;
        }
        for (uint32_t id : s->req.local_prompt().ids()) s->base += id;
        s->max = std::max<uint32_t>(1, s->req.max_new_tokens());
        s->live = true;
        s->pos = streams_.insert(streams_.end(), s);
        running_.fetch_add(1);
        break;
      case kWrite:
        s->writing = false;
        if (!ok) s->ended = true;
        Flush(s);
        break;
      case kDone:
        s->ended = true;
        Flush(s);
        break;
      case kFinish:
        break;
    }
    if (s->pending == 0 && s->finishing) delete s;
  }

  void Step() {
    for (Stream* s : streams_) {
      if (s->produced < s->max) ++s->produced;
    }
    for (auto it = streams_.begin(); it != streams_.end();) {
      Stream* s = *it++;
      Flush(s);
    }
  }

  // Sends what the stream has produced and not sent, or ends it.
  void Flush(Stream* s) {
    if (s->writing || s->finishing) return;
    if (s->ended) {
      Finish(s, grpc::Status::CANCELLED);
      return;
    }
    if (s->sent < s->produced) {
      s->msg.Clear();
      auto* ids = s->msg.mutable_tokens()->mutable_token_ids();
      for (; s->sent < s->produced; ++s->sent) {
        ids->Add(static_cast<uint32_t>((s->base + s->sent) % flags.vocab));
      }
      Write(s);
      return;
    }
    if (s->sent == s->max && !s->msg.has_done()) {
      s->msg.Clear();
      s->msg.mutable_done()->set_reason(pb::DECODE_FINISH_LENGTH);
      s->msg.mutable_done()->set_tokens(s->max);
      Write(s);
      return;
    }
    if (s->msg.has_done()) Finish(s, grpc::Status::OK);
  }

  void Write(Stream* s) {
    s->writing = true;
    ++s->pending;
    s->writer.Write(s->msg, &s->write);
  }

  void Finish(Stream* s, const grpc::Status& st) {
    s->finishing = true;
    if (s->live) {
      streams_.erase(s->pos);
      running_.fetch_sub(1);
      s->live = false;
    }
    ++s->pending;
    s->writer.Finish(st, &s->finish);
  }

  grpc::ServerCompletionQueue* cq_ = nullptr;
  std::list<Stream*> streams_;
  std::atomic<int64_t> running_{0};
  grpc::Alarm step_;
  int step_tag_ = 0;
  std::chrono::system_clock::time_point next_step_ = std::chrono::system_clock::now();
};

int Run(int argc, char** argv) {
  FlagSet fs("sambay-token-source", "SAMBAY_TOKEN_SOURCE_");
  fs.AddString("host", &flags.host, "Address to bind.");
  fs.AddInt("port", &flags.port, "gRPC port (0 = any free port).");
  fs.AddString("port-file", &flags.port_file, "Write the port file here once listening.");
  fs.AddInt("step-us", &flags.step_us, "Microseconds between decode steps (a token per stream).");
  fs.AddInt("vocab", &flags.vocab, "Token ids are taken modulo this (the router's vocabulary).");
  fs.AddString("fingerprint", &flags.fingerprint, "Model fingerprint reported by GetInfo.");
  fs.AddInt("max-running", &flags.max_running, "Sequence slots reported by GetInfo/GetLoad.");
  if (auto exit_code = ParseServerFlags(fs, "sambay-token-source", argc, argv)) return *exit_code;
  if (flags.step_us < 1 || flags.vocab < 1 || flags.max_running < 1) {
    std::fprintf(stderr, "sambay-token-source: --step-us, --vocab, --max-running must be >= 1\n");
    return 2;
  }
  TokenSource service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::StrCat(flags.host, ":", flags.port),
                           grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::ServerCompletionQueue> cq = builder.AddCompletionQueue();
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "sambay-token-source: cannot listen\n");
    return 1;
  }
  BlockTerminationSignals();
  if (!flags.port_file.empty()) {
    if (absl::Status s = WritePortFile(flags.port_file, port, 0); !s.ok()) {
      std::fprintf(stderr, "sambay-token-source: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  std::fprintf(stderr, "sambay-token-source: serving on %s:%d, step %d us\n", flags.host.c_str(),
               port, static_cast<int>(flags.step_us));
  std::thread loop([&] { service.Serve(cq.get()); });
  loop.detach();
  WaitForTerminationSignal();
  // A benchmark fixture: end the streams and leave (no orderly drain of the queue).
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  std::fflush(stderr);
  std::_Exit(0);
}

}  // namespace
}  // namespace sambay

int main(int argc, char** argv) { return sambay::Run(argc, argv); }
