// SIMD helpers shared by the CPU kernels (bifpn_fusion_cpu.cpp, ms_deform_attn_cpu.cpp).
//
// * GLID_VECTOR_EXT: 1 when the compiler has the GCC/Clang vector extension (`vector_size`); then
//   glid::simd holds the 32-byte vector types. A kernel that cannot work without it checks
//   `#if !GLID_VECTOR_EXT` and stops with #error; one with a fallback may add its own opt-out.
// * GLID_INLINE: always inline. Every helper that passes a SIMD value by value must be inlined,
//   so that no real call passes a 32-byte vector between code compiled for different ISAs (an
//   AVX2 clone and a baseline function disagree on how it is passed, see -Wpsabi below).
// * GLID_SIMD_CLONES: compile a hot loop twice, for AVX2 and for the baseline ISA, and let the
//   loader pick one at run time (GCC function multi-versioning, Linux/x86-64 only; empty
//   elsewhere).
// * GLID_HAS_AVX2_PATH / GLID_TARGET_AVX2 / glid::simd::cpu_has_avx2(): the same two versions
//   chosen by hand at run time (x86 GCC/Clang), for entry points that are templates.
// Only CPU translation units include this header (not the .cu files).
#pragma once

#include <cstdint>

#if defined(__GNUC__) || defined(__clang__)
#define GLID_VECTOR_EXT 1
#else
#define GLID_VECTOR_EXT 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define GLID_INLINE inline __attribute__((always_inline))
#else
#define GLID_INLINE inline
#endif

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define GLID_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GLID_SIMD_CLONES
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define GLID_HAS_AVX2_PATH 1
#define GLID_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define GLID_HAS_AVX2_PATH 0
#endif

#if GLID_VECTOR_EXT
// 32-byte vectors are passed by value only between always_inline functions of one translation
// unit: the note that their ABI differs without AVX concerns nothing outside it. Off for the rest
// of the including file (its templates instantiate below).
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace glid {
namespace simd {

#if GLID_VECTOR_EXT
// 32-byte SIMD values: one AVX register, or two SSE registers on a baseline x86-64 build.
typedef float VecF __attribute__((vector_size(32)));       // 8 x float
typedef double VecD __attribute__((vector_size(32)));      // 4 x double
typedef int32_t VecI __attribute__((vector_size(32)));     // 8 x int32
typedef uint32_t VecU __attribute__((vector_size(32)));    // 8 x uint32
typedef uint16_t VecU16 __attribute__((vector_size(16)));  // 8 x uint16 (bfloat16 bits)
#endif

// Whether this CPU runs the GLID_TARGET_AVX2 versions (AVX2 and FMA); checked once.
inline bool cpu_has_avx2() {
#if GLID_HAS_AVX2_PATH
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace simd
}  // namespace glid
