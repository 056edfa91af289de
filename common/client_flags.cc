#include "common/client_flags.h"

#include <chrono>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/grpc_channel.h"
#include "common/tls.h"

namespace sambay {
namespace {

// How often a client's TLS credentials re-read their files (a long sambay-bench run outlives a
// short-lived certificate).
constexpr absl::Duration kTlsReload = absl::Minutes(1);

TlsFiles FilesOf(const ClientFlags& flags) {
  return TlsFiles{.cert = flags.tls_cert, .key = flags.tls_key, .ca = flags.tls_ca};
}

// Printable ASCII without spaces: what an HTTP header value and gRPC metadata carry unchanged.
bool IsTokenText(const std::string& s) {
  for (const char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

void RegisterClientFlags(FlagSet& fs, ClientFlags* flags, const char* address_help,
                         const char* timeout_help) {
  fs.AddString("address", &flags->address, address_help);
  fs.AddDouble("timeout", &flags->timeout, timeout_help);
  fs.AddInt("max-message-mib", &flags->max_message_mib, "Largest gRPC message (MiB).");
  fs.AddBool("tls", &flags->tls,
             "Connect with TLS, verifying the server against the system's CA roots (or "
             "--tls-ca). Also SAMBAY_TLS.");
  fs.AddString("tls-ca", &flags->tls_ca,
               "PEM CA bundle to verify the server's certificate against; turns TLS on. Also "
               "SAMBAY_TLS_CA; --tls-ca '' turns it off again.");
  fs.AddString("tls-cert", &flags->tls_cert,
               "PEM client certificate chain presented to the server (mTLS; with --tls-key); "
               "turns TLS on. Also SAMBAY_TLS_CERT.");
  fs.AddString("tls-key", &flags->tls_key, "PEM private key of --tls-cert. Also SAMBAY_TLS_KEY.");
  fs.AddString("tls-server-name", &flags->tls_server_name,
               "With TLS: the name the server's certificate must carry, instead of the host of "
               "--address. Also SAMBAY_TLS_SERVER_NAME.");
  fs.AddString("api-key", &flags->api_key,
               "API key, sent as 'authorization: Bearer KEY' with every call (never printed). "
               "Also SAMBAY_API_KEY, which keeps it off the command line.");
}

absl::Status ApplySharedClientEnv(const FlagSet& fs, ClientFlags* flags,
                                  const std::function<const char*(const char*)>& getenv) {
  const auto get = [&](const char* name) -> const char* {
    return getenv ? getenv(name) : std::getenv(name);
  };
  const nlohmann::json set = fs.Effective()["set_by"];
  const struct {
    const char* flag;
    const char* env;
    std::string* target;
  } strings[] = {{"tls-ca", "SAMBAY_TLS_CA", &flags->tls_ca},
                 {"tls-cert", "SAMBAY_TLS_CERT", &flags->tls_cert},
                 {"tls-key", "SAMBAY_TLS_KEY", &flags->tls_key},
                 {"tls-server-name", "SAMBAY_TLS_SERVER_NAME", &flags->tls_server_name},
                 {"api-key", "SAMBAY_API_KEY", &flags->api_key}};
  for (const auto& s : strings) {
    if (const char* v = get(s.env); v != nullptr && !set.contains(s.flag)) *s.target = v;
  }
  if (const char* v = get("SAMBAY_TLS"); v != nullptr && !set.contains("tls")) {
    if (!absl::SimpleAtob(v, &flags->tls)) {
      return absl::InvalidArgumentError(
          absl::StrCat("SAMBAY_TLS: \"", v, "\" is not a boolean (true/false)"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckClientFlags(const ClientFlags& flags) {
  if (flags.address.empty()) {
    return absl::InvalidArgumentError("--address: a host:port is required");
  }
  if (flags.timeout < 0) return absl::InvalidArgumentError("--timeout: must be >= 0");
  if (flags.max_message_mib <= 0 || flags.max_message_mib > 2047) {
    return absl::InvalidArgumentError("--max-message-mib: must be in [1, 2047]");
  }
  if (!IsTokenText(flags.api_key)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--api-key: must be printable ASCII without spaces or control characters (the ",
        flags.api_key.size(), " characters given are not shown)"));
  }
  if (!flags.tls_server_name.empty() && !flags.UseTls()) {
    return absl::InvalidArgumentError(
        "--tls-server-name: only with TLS (--tls, --tls-ca or --tls-cert/--tls-key)");
  }
  if (flags.UseTls()) {
    return CheckTlsFiles(FilesOf(flags), TlsRequire{}, "--tls", "--tls-ca");
  }
  return absl::OkStatus();
}

absl::Status RefuseTls(const ClientFlags& flags, const std::string& why) {
  const struct {
    bool on;
    const char* flag;
    const char* env;
    const char* off;
  } sources[] = {{!flags.tls_ca.empty(), "--tls-ca", "SAMBAY_TLS_CA", "''"},
                 {!flags.tls_cert.empty(), "--tls-cert", "SAMBAY_TLS_CERT", "''"},
                 {!flags.tls_key.empty(), "--tls-key", "SAMBAY_TLS_KEY", "''"},
                 {flags.tls, "--tls", "SAMBAY_TLS", "false"}};
  for (const auto& s : sources) {
    if (!s.on) continue;
    return absl::InvalidArgumentError(absl::StrCat(s.flag, ": ", why, " (turn TLS off with ",
                                                   s.flag, " ", s.off, " or by unsetting ", s.env,
                                                   ")"));
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> MakeClientChannel(const ClientFlags& flags) {
  RpcLimits limits;
  limits.max_message_bytes = flags.max_message_mib << 20;
  if (flags.UseTls()) {
    limits.credentials = MakeTlsChannelCredentials(FilesOf(flags), kTlsReload);
    limits.tls_server_name = flags.tls_server_name;
  }
  return MakeChannel(flags.address, limits);
}

void PrepareClientContext(const ClientFlags& flags, grpc::ClientContext* ctx,
                          double default_timeout) {
  const double seconds = flags.timeout > 0 ? flags.timeout : default_timeout;
  if (seconds > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6)));
  }
  if (!flags.api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + flags.api_key);
}

nlohmann::json RedactedEffective(const FlagSet& fs) {
  nlohmann::json j = fs.Effective();
  auto& flags = j["flags"];
  if (flags.contains("api-key") && !flags["api-key"].get<std::string>().empty()) {
    flags["api-key"] = "<redacted>";
  }
  return j;
}

}  // namespace sambay
