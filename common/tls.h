// TLS for the gRPC ports: file checks at start-up and gRPC credentials that re-read their files.
//
// A TlsFiles names PEM files: `cert` (a certificate chain, leaf first), `key` (its private key)
// and `ca` (a bundle of trusted CA certificates). The credentials are built on gRPC's
// FileWatcherCertificateProvider: the files are read again every `reload` and, when they changed,
// new handshakes use the new contents (cert-manager renews a Secret by swapping the mounted files);
// connections open at the time keep the keys they were made with. CheckTlsFiles reads and checks
// the same files at start-up, because the provider only logs a bad file and then fails every
// handshake.
//
// Server side: `cert`/`key` are the server's identity; with `ca` set, a client must present a
// certificate that chains to it (mTLS), else the handshake fails. Client side: the server's
// certificate must chain to `ca` (empty = the system's roots) and name the target host (or the
// RpcLimits::tls_server_name override); `cert`/`key`, when set, are presented to the server.
// An expired or not-yet-valid certificate fails the handshake on both sides.
//
// Stateless functions; thread-safe.
#ifndef SAMBAY_COMMON_TLS_H_
#define SAMBAY_COMMON_TLS_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace sambay {

struct TlsFiles {
  std::string cert;  // PEM certificate chain
  std::string key;   // PEM private key of the chain's first certificate
  std::string ca;    // PEM bundle of trusted CA certificates
  bool empty() const { return cert.empty() && key.empty() && ca.empty(); }
};

// What CheckTlsFiles requires beyond "cert and key both or neither".
struct TlsRequire {
  bool identity = false;  // cert and key must be set
  bool ca = false;        // ca must be set
};

// Reads and checks the files: cert and key both set or both empty; each set file readable PEM;
// the key matches the certificate; the certificate valid now; the CA bundle holds at least one
// certificate. Errors are INVALID_ARGUMENT and name the flag: `flag_prefix` + "-cert", "-key" or
// "-ca" (flag_prefix "--internal-tls" -> "--internal-tls-key: ..."); `ca_flag` overrides the CA's
// flag name when it is not flag_prefix + "-ca" (the public --tls-client-ca).
absl::Status CheckTlsFiles(const TlsFiles& files, TlsRequire require, absl::string_view flag_prefix,
                           absl::string_view ca_flag = "");

// Server credentials with the identity files.cert/key; with files.ca, client certificates are
// required and verified against it. Call after CheckTlsFiles.
std::shared_ptr<grpc::ServerCredentials> MakeTlsServerCredentials(const TlsFiles& files,
                                                                  absl::Duration reload);

// Channel credentials verifying the server against files.ca (empty = system roots) and presenting
// files.cert/key when set. Call after CheckTlsFiles.
std::shared_ptr<grpc::ChannelCredentials> MakeTlsChannelCredentials(const TlsFiles& files,
                                                                    absl::Duration reload);

}  // namespace sambay

#endif  // SAMBAY_COMMON_TLS_H_
