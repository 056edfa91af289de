// Wire validation of the requests the servers receive: a string field that is not UTF-8 is an
// INVALID_ARGUMENT naming the field ("chat.messages[1].content: invalid UTF-8"), not the INTERNAL
// "Unable to parse request" of gRPC's default protobuf deserializer.
//
// How: explicit specializations of grpc::SerializationTraits, gRPC's (de)serialization hook:
// for google::protobuf::MessageLite (the generated unary handlers and stubs go through it) and for
// the request messages that the generated streaming handlers and asynchronous services use
// directly. Serialization is gRPC's usual one. Deserialize parses as usual; when that fails for a
// request of sambay.v1.Generation or sambay.v1.Worker, it walks the bytes with the message's
// descriptor and names the first string field that is not UTF-8 (other failures, and other
// messages, keep the usual INTERNAL error). A specialization must be seen before any use of its
// type with gRPC, so CMake force-includes this header into every C++ file that uses sambay_proto
// (proto/CMakeLists.txt); it needs only forward declarations.
//
// gRPC's asynchronous request path (Generate in the router) ignores a Deserialize error and
// answers INTERNAL itself, so a GenerateRequest is accepted instead: the message is left empty
// except for the error, which WireError returns and the router's request validation reports.
// A client-streaming handler (the worker's PushState) sees a chunk that fails as the end of the
// stream (ServerReader::Read returns false), so there the error does not reach the caller.
//
// Stateless; thread-safe.
#ifndef SAMBAY_PROTO_WIRE_VALIDATION_H_
#define SAMBAY_PROTO_WIRE_VALIDATION_H_

#include <grpcpp/impl/serialization_traits.h>
#include <grpcpp/support/status.h>

#include <string>

namespace google::protobuf {
class Message;
class MessageLite;
}  // namespace google::protobuf

namespace grpc {
class ByteBuffer;
}  // namespace grpc

namespace sambay::v1 {
class GenerateRequest;
class PrefillRequest;
class DecodeRequest;
class StateChunk;
}  // namespace sambay::v1

namespace sambay {

// The wire error recorded in a GenerateRequest by its deserializer ("text: invalid UTF-8"), or ""
// when it was parsed normally.
std::string WireError(const google::protobuf::Message& message);

namespace wire_internal {
// Parses `buffer` into `message` (and clears the buffer). A string field that is not UTF-8 gives
// INVALID_ARGUMENT naming it, or, with `record`, OK with the error recorded for WireError.
grpc::Status Deserialize(grpc::ByteBuffer* buffer, google::protobuf::Message* message, bool record);
}  // namespace wire_internal

}  // namespace sambay

// Declares the validating SerializationTraits of `Type` (defined in proto/wire_validation.cc).
// Other messages (responses, other services) keep gRPC's own.
#define SAMBAY_VALIDATED_REQUEST(Type)                                           \
  template <>                                                                    \
  class grpc::SerializationTraits<Type, void> {                                  \
   public:                                                                       \
    static grpc::Status Serialize(const Type& message, grpc::ByteBuffer* buffer, \
                                  bool* own_buffer);                             \
    static grpc::Status Deserialize(grpc::ByteBuffer* buffer, Type* message);    \
  }

SAMBAY_VALIDATED_REQUEST(google::protobuf::MessageLite);
SAMBAY_VALIDATED_REQUEST(sambay::v1::GenerateRequest);
SAMBAY_VALIDATED_REQUEST(sambay::v1::PrefillRequest);
SAMBAY_VALIDATED_REQUEST(sambay::v1::DecodeRequest);
SAMBAY_VALIDATED_REQUEST(sambay::v1::StateChunk);

#undef SAMBAY_VALIDATED_REQUEST

#endif  // SAMBAY_PROTO_WIRE_VALIDATION_H_
