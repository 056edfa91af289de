#include "tests/security/certs.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sambay::testing {
namespace {

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "certs: %s failed\n", what);
    std::abort();
  }
}

EVP_PKEY* NewKey() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  Require(key != nullptr, "EVP_EC_gen");
  return key;
}

std::string KeyPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  Require(PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr) == 1, "key");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string s(data, n);
  BIO_free(bio);
  return s;
}

std::string CertPem(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  Require(PEM_write_bio_X509(bio, cert) == 1, "cert");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string s(data, n);
  BIO_free(bio);
  return s;
}

void AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  Require(ext != nullptr, "X509V3_EXT_conf_nid");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A certificate for `key` named `cn`, signed by issuer_key (issuer = null: self-signed).
X509* NewCert(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuer_key,
              absl::Duration not_before, absl::Duration not_after) {
  static long serial = 1000;
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), ++serial);
  X509_gmtime_adj(X509_getm_notBefore(cert), absl::ToInt64Seconds(not_before));
  X509_gmtime_adj(X509_getm_notAfter(cert), absl::ToInt64Seconds(not_after));
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert, issuer != nullptr ? X509_get_subject_name(issuer) : name);
  return cert;
}

}  // namespace

struct Ca::Impl {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  ~Impl() {
    X509_free(cert);
    EVP_PKEY_free(key);
  }
};

Ca::Ca(const std::string& name) : impl_(std::make_unique<Impl>()) {
  impl_->key = NewKey();
  impl_->cert = NewCert(impl_->key, name, nullptr, nullptr, -absl::Hours(1), absl::Hours(24));
  AddExtension(impl_->cert, impl_->cert, NID_basic_constraints, "critical,CA:TRUE");
  AddExtension(impl_->cert, impl_->cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  AddExtension(impl_->cert, impl_->cert, NID_subject_key_identifier, "hash");
  Require(X509_sign(impl_->cert, impl_->key, EVP_sha256()) > 0, "X509_sign");
  pem_ = {CertPem(impl_->cert), KeyPem(impl_->key)};
}

Ca::~Ca() = default;

Pem Ca::Issue(const LeafSpec& spec) const {
  EVP_PKEY* key = NewKey();
  X509* cert =
      NewCert(key, spec.common_name, impl_->cert, impl_->key, spec.not_before, spec.not_after);
  AddExtension(cert, impl_->cert, NID_basic_constraints, "critical,CA:FALSE");
  AddExtension(cert, impl_->cert, NID_key_usage, "critical,digitalSignature,keyEncipherment");
  AddExtension(cert, impl_->cert, NID_ext_key_usage, "serverAuth,clientAuth");
  AddExtension(cert, impl_->cert, NID_authority_key_identifier, "keyid");
  std::vector<std::string> sans;
  for (const auto& d : spec.dns) sans.push_back("DNS:" + d);
  for (const auto& ip : spec.ips) sans.push_back("IP:" + ip);
  if (!sans.empty()) {
    AddExtension(cert, impl_->cert, NID_subject_alt_name, absl::StrJoin(sans, ","));
  }
  Require(X509_sign(cert, impl_->key, EVP_sha256()) > 0, "X509_sign");
  Pem pem{CertPem(cert), KeyPem(key)};
  X509_free(cert);
  EVP_PKEY_free(key);
  return pem;
}

void WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    Require(static_cast<bool>(out), "write");
  }
  Require(std::rename(tmp.c_str(), path.c_str()) == 0, "rename");
}

}  // namespace sambay::testing
