// at::vec overloads of the primitives csrc/element_math.h is written in, so
// its rules run on Vectorized<float/double> lanes in the CPU kernels. Include
// this before element_math.h, only from csrc/cpu/isa/ (compiled once per
// instruction set: the overloads below differ between builds).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <limits>

#if !defined(CPU_CAPABILITY)
#error "vec_primitives.h is for the per-ISA CPU sources (see setup.py)"
#endif

namespace vae_fused {
inline namespace CPU_CAPABILITY {

// Primitives, vectorized (at::vec; lanes of Vectorized<float> or <double>).
// at::vec::maximum propagates NaN like the scalar vmax in element_math.h.
template <typename S>
inline at::vec::Vectorized<S> vmax(const at::vec::Vectorized<S>& a,
                                   const at::vec::Vectorized<S>& b) {
  return at::vec::maximum(a, b);
}
template <typename S>
inline at::vec::Vectorized<S> vmin(const at::vec::Vectorized<S>& a,
                                   const at::vec::Vectorized<S>& b) {
  return at::vec::minimum(a, b);
}
template <typename S>
inline at::vec::Vectorized<S> vlog(const at::vec::Vectorized<S>& a) { return a.log(); }
// float lanes: at::vec's log is sleef's 1-ulp routine; the loss needs two
// logs per element and is bound by them, so a cheaper log pays directly.
// AVX-512: exponent and mantissa from getexp/getmant (mantissa in [0.75, 1.5),
// so f = m - 1 is small and exact), then log1p(f) = f + f^2 r(f) with r a
// degree-7 least-squares fit on [-0.25, 0.5) (max error 1.1e-7 relative, i.e.
// about one float ulp; special values as std::log: 0 -> -inf, x < 0 -> NaN,
// NaN -> NaN). AVX2: sleef's 3.5-ulp log. Over (0, 1) both stay within 2.6e-7
// of the float64 log, and a 4M-element float32 loss within 2e-8 of float64.
#if defined(CPU_CAPABILITY_AVX512)
inline at::vec::Vectorized<float> vlog(const at::vec::Vectorized<float>& a) {
  const __m512 x = a;
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_zero);
  __m512 e = _mm512_getexp_ps(x);
  // getmant folds mantissas in [1.5, 2) down to [0.75, 1): one more in the exponent.
  e = _mm512_mask_add_ps(e, _mm512_cmp_ps_mask(m, one, _CMP_LT_OQ), e, one);
  const __m512 f = _mm512_sub_ps(m, one);
  __m512 r = _mm512_set1_ps(0.052685316652059555f);
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(-0.11928088217973709f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(0.14967049658298492f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(-0.16838450729846954f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(0.19979919493198395f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(-0.24992845952510834f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(0.33333471417427063f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(-0.5000007152557373f));
  const __m512 log1p_f = _mm512_fmadd_ps(_mm512_mul_ps(f, f), r, f);
  // e * ln 2 in two parts (ln2_hi has few bits, so e * ln2_hi is exact).
  __m512 result = _mm512_fmadd_ps(e, _mm512_set1_ps(1.428606765330187e-06f), log1p_f);
  result = _mm512_fmadd_ps(e, _mm512_set1_ps(0.693145751953125f), result);
  // log of a negative number is NaN (getmant above used |x|); -0 stays -inf.
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_mov_ps(result, negative, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
}
#elif defined(CPU_CAPABILITY_AVX2)
inline at::vec::Vectorized<float> vlog(const at::vec::Vectorized<float>& a) {
  return Sleef_logf8_u35(a);
}
#endif
template <typename S>
inline at::vec::Vectorized<S> vlog1p(const at::vec::Vectorized<S>& a) { return a.log1p(); }
template <typename S>
inline at::vec::Vectorized<S> vexp(const at::vec::Vectorized<S>& a) { return a.exp(); }
template <typename S>
inline at::vec::Vectorized<S> vabs(const at::vec::Vectorized<S>& a) { return a.abs(); }
template <typename S>
inline at::vec::Vectorized<S> vdiv(const at::vec::Vectorized<S>& n, const at::vec::Vectorized<S>& d) {
  return n / d;
}
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// The estimate (14 bits on AVX-512, 12 on AVX2) refined by one Newton step,
// r' = r (2 - d r): about 24 bits, n / d within an ulp or so of IEEE.
inline at::vec::Vectorized<float> vdiv(const at::vec::Vectorized<float>& n,
                                       const at::vec::Vectorized<float>& d) {
  using Vec = at::vec::Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512)
  const Vec r = _mm512_rcp14_ps(d);
#else
  const Vec r = _mm256_rcp_ps(d);
#endif
  const Vec refined = r * at::vec::fmsub(Vec(0.0f) - d, r, Vec(-2.0f));
  return n * refined;
}
#endif
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

}  // namespace CPU_CAPABILITY
}  // namespace vae_fused
