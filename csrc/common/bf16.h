// fp32 -> bf16 rounding on raw bits, the one implementation the kernels use: round to nearest
// even, NaN -> 0x7FC0, bit for bit what c10::BFloat16(float) gives. Plain integer operations on
// a float or on a GCC vector of floats, so that loops and vector code compile to vector
// instructions (c10::BFloat16's scalar conversion does not vectorize).
#pragma once

#include <cstdint>
#include <cstring>

namespace qa_kernels {

// v rounded to bf16, as the high 16 bits of each 32-bit lane; the low 16 bits are not cleared.
// F: float with U = uint32_t, or a GCC vector of floats with U the uint32_t vector of its size.
// (A 64-byte vector returned by value changes the ABI below AVX-512, -Wpsabi: this function is
// always inlined.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename U, typename F>
inline __attribute__((always_inline)) U bf16_in_high_half(const F& v) {
  static_assert(sizeof(U) == sizeof(F), "U holds the bits of F");
  U u;
  std::memcpy(&u, &v, sizeof(u));
  const U rounded = u + (((u >> 16) & 1u) + 0x7FFFu);
  return v != v ? U{} + 0x7FC00000u : rounded;
}
#pragma GCC diagnostic pop

// The bits of c10::BFloat16(v).
inline __attribute__((always_inline)) uint16_t bf16_bits(float v) {
  return static_cast<uint16_t>(bf16_in_high_half<uint32_t>(v) >> 16);
}

}  // namespace qa_kernels
