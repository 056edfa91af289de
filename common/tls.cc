#include "common/tls.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sambay {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

absl::Status Bad(absl::string_view flag, absl::string_view path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, ": ", what));
}

absl::Status ReadFile(absl::string_view flag, const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Bad(flag, path, "cannot read the file");
  std::ostringstream s;
  s << in.rdbuf();
  *out = s.str();
  if (out->empty()) return Bad(flag, path, "the file is empty");
  return absl::OkStatus();
}

// Every certificate of a PEM file, in order; an error when there is none.
absl::Status ReadCertificates(absl::string_view flag, const std::string& path,
                              std::vector<X509Ptr>* certs) {
  std::string pem;
  if (absl::Status s = ReadFile(flag, path, &pem); !s.ok()) return s;
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) certs->emplace_back(x);
  ERR_clear_error();  // the end of the file reads as an error
  if (certs->empty()) return Bad(flag, path, "no PEM certificate in the file");
  return absl::OkStatus();
}

absl::Status CheckValidNow(absl::string_view flag, const std::string& path, const X509* cert) {
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    return Bad(flag, path, "the certificate is not valid yet");
  }
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    return Bad(flag, path, "the certificate has expired");
  }
  return absl::OkStatus();
}

absl::Status CheckIdentity(const TlsFiles& files, const std::string& cert_flag,
                           const std::string& key_flag) {
  std::vector<X509Ptr> chain;
  if (absl::Status s = ReadCertificates(cert_flag, files.cert, &chain); !s.ok()) return s;
  if (absl::Status s = CheckValidNow(cert_flag, files.cert, chain.front().get()); !s.ok()) {
    return s;
  }
  std::string pem;
  if (absl::Status s = ReadFile(key_flag, files.key, &pem); !s.ok()) return s;
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  // No password callback: an encrypted key is refused, never prompted for.
  pem_password_cb* no_password = [](char*, int, int, void*) { return 0; };
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_password, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return Bad(key_flag, files.key,
               "no PEM private key in the file (an encrypted key is not supported)");
  }
  if (X509_check_private_key(chain.front().get(), key.get()) != 1) {
    ERR_clear_error();
    return Bad(key_flag, files.key,
               absl::StrCat("the key does not match the certificate in ", files.cert));
  }
  return absl::OkStatus();
}

// The provider re-reads its files every `reload` (whole seconds, at least 1).
std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> Provider(
    const TlsFiles& files, absl::Duration reload) {
  const auto seconds = static_cast<unsigned>(std::max<int64_t>(1, absl::ToInt64Seconds(reload)));
  return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(files.key, files.cert,
                                                                              files.ca, seconds);
}

}  // namespace

absl::Status CheckTlsFiles(const TlsFiles& files, TlsRequire require, absl::string_view flag_prefix,
                           absl::string_view ca_flag) {
  const std::string cert_flag = absl::StrCat(flag_prefix, "-cert");
  const std::string key_flag = absl::StrCat(flag_prefix, "-key");
  const std::string ca_name =
      ca_flag.empty() ? absl::StrCat(flag_prefix, "-ca") : std::string(ca_flag);
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(files.cert.empty() ? cert_flag : key_flag,
                                                   ": required with ",
                                                   files.cert.empty() ? key_flag : cert_flag));
  }
  if (require.identity && files.cert.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(cert_flag, ": required"));
  }
  if (require.ca && files.ca.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(ca_name, ": required"));
  }
  if (!files.cert.empty()) {
    if (absl::Status s = CheckIdentity(files, cert_flag, key_flag); !s.ok()) return s;
  }
  if (!files.ca.empty()) {
    std::vector<X509Ptr> roots;
    if (absl::Status s = ReadCertificates(ca_name, files.ca, &roots); !s.ok()) return s;
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> MakeTlsServerCredentials(const TlsFiles& files,
                                                                  absl::Duration reload) {
  grpc::experimental::TlsServerCredentialsOptions options(Provider(files, reload));
  options.watch_identity_key_cert_pairs();
  if (!files.ca.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> MakeTlsChannelCredentials(const TlsFiles& files,
                                                                    absl::Duration reload) {
  grpc::experimental::TlsChannelCredentialsOptions options;
  if (!files.ca.empty() || !files.cert.empty()) {
    options.set_certificate_provider(Provider(files, reload));
    if (!files.ca.empty()) options.watch_root_certs();
    if (!files.cert.empty()) options.watch_identity_key_cert_pairs();
  }
  options.set_verify_server_certs(true);
  return grpc::experimental::TlsCredentials(options);
}

}  // namespace sambay
