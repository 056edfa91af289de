// CRC-32C (Castagnoli): checksums for on-disk and on-wire data (state snapshots, checkpoints).
//
// Reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF (the iSCSI / ext4 /
// LevelDB checksum). Crc32c("123456789") == 0xE3069283. Streaming:
//   Crc32c(ab) == Crc32cExtend(Crc32c(a), b), and Crc32c(x) == Crc32cExtend(0, x).
//
// Uses the SSE4.2 crc32 instruction when the CPU has it (checked once at run time), else a
// slicing-by-8 table implementation; both give identical results.
//
// Thread-safety: pure functions over immutable tables; safe to call from any thread.
#ifndef SAMBAY_COMMON_CRC32C_H_
#define SAMBAY_COMMON_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace sambay {

// Extends `crc` (a finished CRC-32C of some prefix, or 0 for the empty prefix) with `n` bytes.
// `data` may be null when n == 0.
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);

// CRC-32C of `n` bytes at `data`.
inline uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }

namespace crc32c_internal {

// The table (slicing-by-8) implementation; always available.
uint32_t ExtendPortable(uint32_t crc, const void* data, size_t n);

// True if ExtendHardware may be called on this CPU.
bool HardwareAvailable();

// The SSE4.2 implementation. REQUIRES: HardwareAvailable().
uint32_t ExtendHardware(uint32_t crc, const void* data, size_t n);

}  // namespace crc32c_internal
}  // namespace sambay

#endif  // SAMBAY_COMMON_CRC32C_H_
