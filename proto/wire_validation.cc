#include "proto/wire_validation.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/message.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "sambay/v1/generate.pb.h"
#include "sambay/v1/worker.pb.h"

namespace sambay {
namespace {

namespace gp = google::protobuf;
using gp::internal::WireFormatLite;

// The unknown field that carries a recorded wire error (the largest field number; no message
// declares it).
constexpr int kWireErrorField = (1 << 29) - 1;
// Nesting deeper than protobuf's own parser allows is not walked.
constexpr int kMaxDepth = 100;

// Well-formed UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool IsUtf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    int n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (end - p <= n) return false;
    for (int i = 1; i <= n; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (n == 3 && (cp < 0x10000 || cp > 0x10FFFF))) {
      return false;
    }
    p += n + 1;
  }
  return true;
}

// Walks the fields of one message (up to the stream's current limit) and sets *path to the first
// string field that is not UTF-8 ("chat.messages[1].content"); false if there is none or the
// bytes end malformed first.
bool FindInvalidUtf8(gp::io::CodedInputStream* in, const gp::Descriptor& type,
                     const std::string& prefix, int depth, std::string* path) {
  if (depth > kMaxDepth) return false;
  std::map<int, int> seen;  // occurrences so far of each repeated field
  for (;;) {
    const uint32_t tag = in->ReadTag();
    if (tag == 0) return false;
    const gp::FieldDescriptor* f = type.FindFieldByNumber(WireFormatLite::GetTagFieldNumber(tag));
    const bool walk =
        f != nullptr &&
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED &&
        (f->type() == gp::FieldDescriptor::TYPE_STRING ||
         f->type() == gp::FieldDescriptor::TYPE_MESSAGE);
    if (!walk) {
      if (!WireFormatLite::SkipField(in, tag)) return false;
      continue;
    }
    std::string name = f->is_repeated()
                           ? absl::StrCat(prefix, f->name(), "[", seen[f->number()]++, "]")
                           : absl::StrCat(prefix, f->name());
    uint32_t length = 0;
    if (!in->ReadVarint32(&length)) return false;
    if (f->type() == gp::FieldDescriptor::TYPE_STRING) {
      std::string value;
      if (!in->ReadString(&value, static_cast<int>(length))) return false;
      if (!IsUtf8(value)) {
        *path = std::move(name);
        return true;
      }
    } else {
      const gp::io::CodedInputStream::Limit limit = in->PushLimit(static_cast<int>(length));
      if (FindInvalidUtf8(in, *f->message_type(), absl::StrCat(name, "."), depth + 1, path))
        return true;
      in->PopLimit(limit);
    }
  }
}

// The requests whose invalid UTF-8 is named: every request of sambay.v1.Generation and
// sambay.v1.Worker that has a string field.
bool IsValidatedRequest(const std::string& type) {
  static const auto* const kTypes = new std::set<std::string>{
      "sambay.v1.GenerateRequest", "sambay.v1.TokenizeRequest",   "sambay.v1.DetokenizeRequest",
      "sambay.v1.AbortRequest",    "sambay.v1.PrefillRequest",    "sambay.v1.DecodeRequest",
      "sambay.v1.ReleaseRequest",  "sambay.v1.RenewLeaseRequest", "sambay.v1.StateChunk"};
  return kTypes->count(type) > 0;
}

}  // namespace

std::string WireError(const gp::Message& message) {
  const gp::UnknownFieldSet& unknown = message.GetReflection()->GetUnknownFields(message);
  for (int i = 0; i < unknown.field_count(); ++i) {
    const gp::UnknownField& f = unknown.field(i);
    if (f.number() == kWireErrorField && f.type() == gp::UnknownField::TYPE_LENGTH_DELIMITED) {
      return f.length_delimited();
    }
  }
  return "";
}

namespace wire_internal {

grpc::Status Serialize(const gp::MessageLite& message, grpc::ByteBuffer* buffer, bool* own_buffer) {
  return grpc::GenericSerialize<grpc::ProtoBufferWriter, gp::MessageLite>(message, buffer,
                                                                          own_buffer);
}

grpc::Status Deserialize(grpc::ByteBuffer* buffer, gp::MessageLite* message) {
  if (buffer == nullptr) return grpc::Status(grpc::StatusCode::INTERNAL, "No payload");
  bool parsed = false;
  {
    grpc::ProtoBufferReader reader(buffer);
    if (!reader.status().ok()) return reader.status();
    parsed = message->ParseFromZeroCopyStream(&reader);
  }
  grpc::Status result;
  if (!parsed) {
    result = grpc::Status(grpc::StatusCode::INTERNAL, message->InitializationErrorString());
    const std::string type = message->GetTypeName();
    auto* full = dynamic_cast<gp::Message*>(message);
    std::string path;
    if (full != nullptr && IsValidatedRequest(type)) {
      // Read the bytes again (the reader does not consume the buffer) to name the field.
      grpc::ProtoBufferReader reader(buffer);
      gp::io::CodedInputStream in(&reader);
      if (!FindInvalidUtf8(&in, *full->GetDescriptor(), "", 0, &path)) path.clear();
    }
    if (path.empty()) {
      // The usual error.
    } else if (type == "sambay.v1.GenerateRequest") {
      full->Clear();
      full->GetReflection()->MutableUnknownFields(full)->AddLengthDelimited(
          kWireErrorField, absl::StrCat(path, ": invalid UTF-8"));
      result = grpc::Status();
    } else {
      result =
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat(path, ": invalid UTF-8"));
    }
  }
  buffer->Clear();
  return result;
}

}  // namespace wire_internal
}  // namespace sambay

#define SAMBAY_DEFINE_VALIDATED_REQUEST(Type)                                               \
  grpc::Status grpc::SerializationTraits<Type, void>::Serialize(                            \
      const Type& message, grpc::ByteBuffer* buffer, bool* own_buffer) {                    \
    return sambay::wire_internal::Serialize(message, buffer, own_buffer);                   \
  }                                                                                         \
  grpc::Status grpc::SerializationTraits<Type, void>::Deserialize(grpc::ByteBuffer* buffer, \
                                                                  Type* message) {          \
    return sambay::wire_internal::Deserialize(buffer, message);                             \
  }

SAMBAY_DEFINE_VALIDATED_REQUEST(google::protobuf::MessageLite)
SAMBAY_DEFINE_VALIDATED_REQUEST(sambay::v1::GenerateRequest)
SAMBAY_DEFINE_VALIDATED_REQUEST(sambay::v1::PrefillRequest)
SAMBAY_DEFINE_VALIDATED_REQUEST(sambay::v1::DecodeRequest)
SAMBAY_DEFINE_VALIDATED_REQUEST(sambay::v1::StateChunk)
