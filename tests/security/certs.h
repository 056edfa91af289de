// Test support: throwaway X.509 certificates made with the OpenSSL API at run time (no key
// material is committed). A Ca signs leaf certificates with chosen names and validity; Write puts
// the PEM files in a directory for the servers' --*-tls-* flags.
//
// Ownership: a Ca owns its key and certificate. Thread-safety: none (test main thread).
#ifndef SAMBAY_TESTS_SECURITY_CERTS_H_
#define SAMBAY_TESTS_SECURITY_CERTS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace sambay::testing {

// PEM texts of a certificate and its private key.
struct Pem {
  std::string cert;
  std::string key;
};

struct LeafSpec {
  std::string common_name;
  std::vector<std::string> dns;                 // subjectAltName DNS entries
  std::vector<std::string> ips;                 // subjectAltName IP entries
  absl::Duration not_before = -absl::Hours(1);  // relative to now
  absl::Duration not_after = absl::Hours(24);
};

class Ca {
 public:
  explicit Ca(const std::string& name);  // a self-signed P-256 CA valid from an hour ago for a day
  ~Ca();
  Ca(const Ca&) = delete;
  Ca& operator=(const Ca&) = delete;

  const std::string& cert_pem() const { return pem_.cert; }
  // A P-256 leaf certificate signed by this CA (server and client use).
  Pem Issue(const LeafSpec& spec) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  Pem pem_;
};

// Writes `text` to `path` atomically (temp file + rename), as a renewal does; aborts the test
// binary on an I/O error (a broken test machine).
void WriteFileAtomically(const std::string& path, const std::string& text);

}  // namespace sambay::testing

#endif  // SAMBAY_TESTS_SECURITY_CERTS_H_
