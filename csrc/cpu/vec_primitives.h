// at::vec overloads of the primitives csrc/element_math.h is written in, so
// its rules run on Vectorized<float/double> lanes in the CPU kernels. Include
// this before element_math.h, only from csrc/cpu/isa/ (compiled once per
// instruction set: the overloads below differ between builds).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <limits>

#include "vec_math.h"

#if !defined(CPU_CAPABILITY)
#error "vec_primitives.h is for the per-ISA CPU sources (see setup.py)"
#endif

namespace vae_fused {
inline namespace CPU_CAPABILITY {

// Primitives, vectorized (at::vec; lanes of Vectorized<float> or <double>).
// vmax/vmin follow the scalar rule of element_math.h exactly, (a < b) ? b : a
// and (b < a) ? b : a (a NaN in `a` propagates): that is the x86 max/min
// instruction with the operands swapped, one operation (at::vec::maximum,
// which propagates a NaN from either side, takes four on AVX-512).
template <typename S>
inline at::vec::Vectorized<S> vmax(const at::vec::Vectorized<S>& a,
                                   const at::vec::Vectorized<S>& b) {
  return at::vec::Vectorized<S>::blendv(a, b, a < b);
}
template <typename S>
inline at::vec::Vectorized<S> vmin(const at::vec::Vectorized<S>& a,
                                   const at::vec::Vectorized<S>& b) {
  return at::vec::Vectorized<S>::blendv(a, b, b < a);
}
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
inline at::vec::Vectorized<float> vmax(const at::vec::Vectorized<float>& a,
                                       const at::vec::Vectorized<float>& b) {
  return vec_math_detail::NativeLanes::max(b, a);
}
inline at::vec::Vectorized<float> vmin(const at::vec::Vectorized<float>& a,
                                       const at::vec::Vectorized<float>& b) {
  return vec_math_detail::NativeLanes::min(b, a);
}
#endif
template <typename S>
inline at::vec::Vectorized<S> vlog(const at::vec::Vectorized<S>& a) { return a.log(); }
// float lanes: the op's own polynomial log/log1p/exp (vec_math.h, <= 2 ulp,
// about 2-4x Sleef's): the loss is two logs per element and bound by them.
// double lanes keep ATen's full-precision routines.
inline at::vec::Vectorized<float> vlog(const at::vec::Vectorized<float>& a) { return fast_log(a); }
template <typename S>
inline at::vec::Vectorized<S> vlog_unit_interval(const at::vec::Vectorized<S>& a) { return a.log(); }
inline at::vec::Vectorized<float> vlog_unit_interval(const at::vec::Vectorized<float>& a) {
  return fast_log_unit_interval(a);
}
inline at::vec::Vectorized<float> vlog1p(const at::vec::Vectorized<float>& a) { return fast_log1p(a); }
template <typename S>
inline at::vec::Vectorized<S> vlog_one_to_two(const at::vec::Vectorized<S>& a) { return a.log(); }
inline at::vec::Vectorized<float> vlog_one_to_two(const at::vec::Vectorized<float>& a) {
  return fast_log_one_to_two(a);
}
inline at::vec::Vectorized<float> vexp(const at::vec::Vectorized<float>& a) { return fast_exp(a); }
template <typename S>
inline at::vec::Vectorized<S> vlog1p(const at::vec::Vectorized<S>& a) { return a.log1p(); }
template <typename S>
inline at::vec::Vectorized<S> vexp(const at::vec::Vectorized<S>& a) { return a.exp(); }
template <typename S>
inline at::vec::Vectorized<S> vabs(const at::vec::Vectorized<S>& a) { return a.abs(); }
// IEEE division (vdivps/vdivpd): on the Zen 5 this was measured on, no slower
// in the BCE pass than a reciprocal estimate plus a Newton step (the divider
// runs beside the ~60 other vector operations of an element pair), and the
// BCE gradient then has eager's bits (see vdiv in element_math.h).
template <typename S>
inline at::vec::Vectorized<S> vdiv(const at::vec::Vectorized<S>& n, const at::vec::Vectorized<S>& d) {
  return n / d;
}
// Comparisons on Vectorized return an all-ones/all-zeros lane mask.
template <typename S>
inline at::vec::Vectorized<S> vless(const at::vec::Vectorized<S>& a,
                                    const at::vec::Vectorized<S>& b) {
  return a < b;
}
template <typename S>
inline at::vec::Vectorized<S> vselect(const at::vec::Vectorized<S>& mask,
                                      const at::vec::Vectorized<S>& a,
                                      const at::vec::Vectorized<S>& b) {
  return at::vec::Vectorized<S>::blendv(b, a, mask);
}

template <typename S>
inline at::vec::Vectorized<S> vkeep_if(const at::vec::Vectorized<S>& mask,
                                       const at::vec::Vectorized<S>& a) {
  return at::vec::Vectorized<S>::blendv(at::vec::Vectorized<S>(0), a, mask);
}
#if defined(CPU_CAPABILITY_AVX2)
// The mask's lanes are all-ones or all-zeros: a & mask. (GCC 12 turns a
// compare mask that feeds two blends into a sign test first, one more
// operation a vector in the binary-target BCE.)
inline at::vec::Vectorized<float> vkeep_if(const at::vec::Vectorized<float>& mask,
                                           const at::vec::Vectorized<float>& a) {
  return _mm256_and_ps(mask, a);
}
#endif
// Fused multiply-add: one instruction in the AVX2/AVX-512 builds; the DEFAULT
// build's Vectorized rounds a * b before adding.
template <typename S>
inline at::vec::Vectorized<S> vfma(const at::vec::Vectorized<S>& a, const at::vec::Vectorized<S>& b,
                                   const at::vec::Vectorized<S>& c) {
  return at::vec::fmadd(a, b, c);
}

#if defined(CPU_CAPABILITY_AVX512)
inline at::vec::Vectorized<float> vkeep_if(__mmask16 mask, const at::vec::Vectorized<float>& a) {
  return _mm512_maskz_mov_ps(mask, a);
}
// select on an AVX-512 mask register (one instruction; the lane-vector form
// above converts the mask back first).
inline at::vec::Vectorized<float> vselect(__mmask16 mask, const at::vec::Vectorized<float>& a,
                                          const at::vec::Vectorized<float>& b) {
  return _mm512_mask_blend_ps(mask, b, a);
}
#endif

}  // namespace CPU_CAPABILITY
}  // namespace vae_fused
