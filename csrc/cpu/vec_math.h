// Fast float32 log, log1p and exp for the CPU kernels: polynomials evaluated
// with FMA, exponents by bit manipulation, no division; log by an 8-entry
// table held in one register (a lane permute, not a memory gather).
//
//   at::vec::Vectorized<float> fast_log(const at::vec::Vectorized<float>& x);
//   at::vec::Vectorized<float> fast_log_unit_interval(const at::vec::Vectorized<float>& x);
//   at::vec::Vectorized<float> fast_log_one_to_two(const at::vec::Vectorized<float>& x);
//   at::vec::Vectorized<float> fast_log1p(const at::vec::Vectorized<float>& x);
//   at::vec::Vectorized<float> fast_exp(const at::vec::Vectorized<float>& x);
//   float fast_log(float), fast_log1p(float), fast_exp(float),
//   fast_log_one_to_two(float)  (the same
//   algorithm on one lane, for scalar tails)
//
// Accuracy, float32 result against the float64 function, in ulps of the
// float32-rounded exact value (|got - exact| / ulp, ulp floored at 2^-149):
// <= 2 ulp for all of them over their whole float domain, in every build
// (checked by tests/test_vec_math.py: strided sweeps by default, every float
// under -m slow). float64 code keeps ATen's / libm's full-precision math.
// Measured maxima, every float of the range (AMD EPYC, AVX-512 machine):
//
//   function    range                  AVX-512 = AVX2    DEFAULT
//   fast_log    [2^-149, 2]            1.23 ulp          1.23 ulp
//   fast_log1p  (-1, 2^24]             0.90 ulp          1.04 ulp
//   fast_exp    [-104, 89]             1.01 ulp          1.01 ulp
// (fast_log above 2 only adds k ln 2 to the same reduction; its error there
// is smaller. fast_log_unit_interval is fast_log on [0, 1]; fast_log_one_to_two
// is the table alone, for x in [1, 2] -- BCE-with-logits' log(1 + e^-|z|),
// whose accuracy as a whole tests/test_precision.py checks through the op.)
//
// The AVX2 and AVX-512 builds are bit-identical (same operations, same
// order; a test checks it). DEFAULT uses std::fma where the compiler has a
// fast fmaf (e.g. aarch64), else a*b + c in double (a*b exact there).
//
// Special values are those of std::log / log1p / exp:
//   log:   +0, -0 -> -inf; x < 0 -> NaN; NaN -> NaN; +inf -> +inf; denormal
//          inputs exact-reduced (scaled by 2^23 first).
//   log_unit_interval: the same on (0, 1]; +-0 -> -150 ln 2 = -103.97 in the
//          vector builds (BCE clamps at -100 either way), no other specials.
//   log_one_to_two: defined on [1, 2] only (no specials).
//   log1p: -1 -> -inf; x < -1 -> NaN; NaN -> NaN; +inf -> +inf; +-0 -> +-0;
//          |x| < 2^-24 -> x.
//   exp:   x > 88.72 -> +inf (as rounding gives it); results below 2^-126 are
//          denormal, correctly scaled (one rounding); x < -103.97 -> 0;
//          -inf -> 0; NaN -> NaN.
//
// Method.
//   log(x): x = 2^k z, z in [0.708, 1.417) from the bits (glibc's logf
//     reduction: subtract the bits of the offset; the exponent field is k,
//     the rest plus the offset is z). The top 3 bits of z's offset mantissa
//     pick an interval i with centre c_i, and log(z) = log(c_i) + log1p(r),
//     r = z / c_i - 1 = fma(z, 1/c_i, -1), |r| < 0.0567, log1p(r) = r +
//     r^2 R(r), R of degree 3 (relative error 6e-9). 1/c_i and log(c_i) come
//     from two 8-entry tables (tools/log_table.py derives them: log(c_i) is
//     a float to within 1.4e-4 ulp; the interval holding 1 has c = 1, so near
//     1 the result is the polynomial on the exact r = z - 1). Then k ln 2 +
//     log(c_i) in one fma, plus log1p(r): 16 vector operations. Denormals
//     and zeros (rare) are scaled by 2^23 first, on a branch taken only by a
//     vector holding one.
//   log1p(x): u = 1 + x rounded, x = 2^k m, m in [sqrt(1/2), sqrt(2)) from
//     the bits (musl's split by the bits of sqrt(1/2)), log(m) = f + f^2 Q(f),
//     f = m - 1, Q of degree 8 (a minimax fit on [sqrt(1/2) - 1, sqrt(2) - 1],
//     relative error 4e-9). Where k = 0 (x in about [-0.29, 0.41]) the
//     polynomial takes x itself (f = x exactly; tiny x falls out as x).
//     Elsewhere (|log1p x| > 0.34) the rounding error c of u (Fast2Sum,
//     larger operand first) is put back to first order: log(u + c) = log(u)
//     + c/u, 1/u = 2^-k / (1 + f) ~= 2^-k (1 - f + f^2 - f^3), a term below
//     2^-24 with a relative error below 2.1%. k ln 2 is added in two parts
//     (ln2_hi has 16 bits, so k ln2_hi is exact).
//   exp(x): n = round(x / ln 2) (by the 1.5 * 2^23 shifter), r = x - n ln 2
//     (Cody-Waite, both steps exact or once rounded), exp(r) = 1 + r + r^2 P(r)
//     with P of degree 4 (relative error 3e-9 on |r| <= ln2 / 2), times 2^n
//     as 2^(n - n/2) * 2^(n/2) so results in the denormal range are rounded
//     once and n = 128 still overflows to inf as it should. x is clamped to
//     [-104, 89] first (exp is 0 / inf beyond).
//
// Everything lives in vae_fused::CPU_CAPABILITY (an inline namespace named
// after the instruction set): this header is compiled once per ISA and the
// builds must never share an inline function.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#ifndef CPU_CAPABILITY
#error "vec_math.h must be compiled with -DCPU_CAPABILITY=<ISA> (see setup.py)"
#endif

namespace vae_fused {
inline namespace CPU_CAPABILITY {
namespace vec_math_detail {

// ---------------------------------------------------------------------------
// Constants (float32 bit patterns where the exact value matters).
inline constexpr float kLn2Hi = 0.693145751953125f;      // 0x3f317200, 16 bits
inline constexpr float kLn2Lo = 1.428606765330187e-06f;  // ln 2 - kLn2Hi
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kShifter = 12582912.0f;           // 1.5 * 2^23
inline constexpr int32_t kSqrtHalfBits = 0x3f3504f3;     // sqrt(1/2)
inline constexpr float kMinNormal = 1.17549435e-38f;     // 2^-126
inline constexpr float kTwo23 = 8388608.0f;              // 2^23
inline constexpr float kExpMin = -104.0f;                // exp(-104) < 2^-150: 0
inline constexpr float kExpMax = 89.0f;                  // exp(89) > FLT_MAX: inf

// log1p(f) = f + f^2 Q(f), f in [sqrt(1/2) - 1, sqrt(2) - 1].
inline constexpr float kLogQ0 = -0.499999881f;
inline constexpr float kLogQ1 = 0.333333254f;
inline constexpr float kLogQ2 = -0.250016093f;
inline constexpr float kLogQ3 = 0.200020134f;
inline constexpr float kLogQ4 = -0.166084304f;
inline constexpr float kLogQ5 = 0.141805962f;
inline constexpr float kLogQ6 = -0.132475004f;
inline constexpr float kLogQ7 = 0.129147291f;
inline constexpr float kLogQ8 = -0.0762317032f;

// log(x) by table: x = 2^k z, z in [kLogTableOff, 2 kLogTableOff) ~ [0.708,
// 1.417), cut into 8 intervals by the top 3 bits of z's offset mantissa;
// interval i has a centre c_i with log(z) = log(c_i) + log1p(r), r = z/c_i - 1,
// |r| < 0.0567. 1 lies in interval 4, where c = 1 (r = z - 1 exactly). The
// other c_i = 1 / kLogInvC[i] were picked near the interval centres so that
// log(c_i) is within 1.4e-4 ulp of its float kLogLogC[i] (a search over
// 8193 float candidates each; tools/log_table.py). 16 entries: the 8 twice,
// so a 16-lane permute needs no index mask.
inline constexpr int32_t kLogTableOffBits = 0x3f355556;  // 0.70833..., 1 at 2/3 of interval 4
alignas(64) inline constexpr float kLogInvC[16] = {
    0x1.5a208cp+0f, 0x1.3f1138p+0f, 0x1.27fb3ep+0f, 0x1.14303ep+0f,
    0x1p+0f,        0x1.cfb0f2p-1f, 0x1.a0aa8ap-1f, 0x1.7a059ep-1f,
    0x1.5a208cp+0f, 0x1.3f1138p+0f, 0x1.27fb3ep+0f, 0x1.14303ep+0f,
    0x1p+0f,        0x1.cfb0f2p-1f, 0x1.a0aa8ap-1f, 0x1.7a059ep-1f};
alignas(64) inline constexpr float kLogLogC[16] = {
    -0x1.34de28p-2f, -0x1.c3050ep-3f, -0x1.293444p-3f, -0x1.36e92cp-4f,
    0.0f,            0x1.95effep-4f,  0x1.a5f7ecp-3f,  0x1.36a74p-2f,
    -0x1.34de28p-2f, -0x1.c3050ep-3f, -0x1.293444p-3f, -0x1.36e92cp-4f,
    0.0f,            0x1.95effep-4f,  0x1.a5f7ecp-3f,  0x1.36a74p-2f};
inline constexpr float kLn2 = 0.693147182f;  // ln 2 rounded (error 2.7e-9 relative)
// log1p(r) = r + r^2 R(r), |r| < 0.0567 (relative error 6.2e-9).
inline constexpr float kLogR0 = -0.49999946f;
inline constexpr float kLogR1 = 0.33333272f;
inline constexpr float kLogR2 = -0.2506693f;
inline constexpr float kLogR3 = 0.20063217f;

// exp(r) = 1 + r + r^2 P(r), |r| <= ln 2 / 2.
inline constexpr float kExpP0 = 0.49999994f;
inline constexpr float kExpP1 = 0.166665211f;
inline constexpr float kExpP2 = 0.0416682772f;
inline constexpr float kExpP3 = 0.00836868677f;
inline constexpr float kExpP4 = 0.00138198247f;

// ---------------------------------------------------------------------------
// Lane back ends: F float lanes, I int32 lanes, M a comparison mask. The
// algorithms below are written once against this interface.

struct ScalarLanes {
  using F = float;
  using I = int32_t;
  using M = bool;
  static F set(float v) { return v; }
  static I seti(int32_t v) { return v; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F fma(F a, F b, F c) {
#if defined(__FMA__) || defined(__FP_FAST_FMAF) || defined(__ARM_FEATURE_FMA)
    return std::fma(a, b, c);
#else
    // No fused multiply-add in this build: in double, where a * b is exact,
    // so the result is the fused one up to a rare double rounding.
    return static_cast<float>(static_cast<double>(a) * b + c);
#endif
  }
  static I as_int(F a) { return std::bit_cast<int32_t>(a); }
  static F as_float(I a) { return std::bit_cast<float>(a); }
  static F to_float(I a) { return static_cast<float>(a); }
  static I iadd(I a, I b) { return static_cast<I>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b)); }
  static I isub(I a, I b) { return static_cast<I>(static_cast<uint32_t>(a) - static_cast<uint32_t>(b)); }
  static I iand(I a, I b) { return a & b; }
  static I imax(I a, I b) { return a < b ? b : a; }
  static I sra1(I a) { return a >> 1; }
  static I sra20(I a) { return a >> 20; }
  static I sra23(I a) { return a >> 23; }
  static I sll23(I a) { return static_cast<I>(static_cast<uint32_t>(a) << 23); }
  // table[i & 7] (the 16-entry tables hold their 8 entries twice)
  static F lookup8(const float* table, I i) { return table[i & 7]; }
  static bool any(M m) { return m; }
  static M lt(F a, F b) { return a < b; }
  static M eq(F a, F b) { return a == b; }
  static M ngt(F a, F b) { return !(a > b); }  // true when unordered
  static M unord(F a) { return a != a; }
  static M mor(M a, M b) { return a || b; }
  static F select(M m, F a, F b) { return m ? a : b; }
  // NaN passes through.
  static F clamp(F x, F lo, F hi) { return x < lo ? lo : (x > hi ? hi : x); }
  static F abs(F a) { return std::fabs(a); }
};

#if defined(CPU_CAPABILITY_AVX2)
struct Avx2Lanes {
  using F = __m256;
  using I = __m256i;
  using M = __m256;
  static F set(float v) { return _mm256_set1_ps(v); }
  static I seti(int32_t v) { return _mm256_set1_epi32(v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static I as_int(F a) { return _mm256_castps_si256(a); }
  static F as_float(I a) { return _mm256_castsi256_ps(a); }
  static F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
  static I isub(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I iand(I a, I b) { return _mm256_and_si256(a, b); }
  static I imax(I a, I b) { return _mm256_max_epi32(a, b); }
  static I sra1(I a) { return _mm256_srai_epi32(a, 1); }
  static I sra20(I a) { return _mm256_srai_epi32(a, 20); }
  static I sra23(I a) { return _mm256_srai_epi32(a, 23); }
  static I sll23(I a) { return _mm256_slli_epi32(a, 23); }
  // vpermps reads the low 3 bits of each index.
  static F lookup8(const float* table, I i) { return _mm256_permutevar8x32_ps(_mm256_load_ps(table), i); }
  static bool any(M m) { return _mm256_movemask_ps(m) != 0; }
  static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M ngt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_NGT_UQ); }
  static M unord(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static M mor(M a, M b) { return _mm256_or_ps(a, b); }
  static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }
  // max/min: (a > b) ? a : b and (a < b) ? a : b, so the second operand
  // comes back when one is NaN (x86's rule).
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  // x goes second: NaN passes through.
  static F clamp(F x, F lo, F hi) { return min(hi, max(lo, x)); }
  static F abs(F a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  // unsigned 32-bit lanes: max, and whether any lane is above `bound`
  static I umax(I a, I b) { return _mm256_max_epu32(a, b); }
  static bool any_above(I a, uint32_t bound) {
    const I b = seti(static_cast<int32_t>(bound));
    return _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(a, b), b)) != -1;
  }
};
#endif

#if defined(CPU_CAPABILITY_AVX512)
struct Avx512Lanes {
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  static F set(float v) { return _mm512_set1_ps(v); }
  static I seti(int32_t v) { return _mm512_set1_epi32(v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static I as_int(F a) { return _mm512_castps_si512(a); }
  static F as_float(I a) { return _mm512_castsi512_ps(a); }
  static F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  static I iadd(I a, I b) { return _mm512_add_epi32(a, b); }
  static I isub(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I iand(I a, I b) { return _mm512_and_si512(a, b); }
  static I imax(I a, I b) { return _mm512_max_epi32(a, b); }
  static I sra1(I a) { return _mm512_srai_epi32(a, 1); }
  static I sra20(I a) { return _mm512_srai_epi32(a, 20); }
  static I sra23(I a) { return _mm512_srai_epi32(a, 23); }
  static I sll23(I a) { return _mm512_slli_epi32(a, 23); }
  // vpermps reads the low 4 bits of each index: the table's 16 entries.
  static F lookup8(const float* table, I i) { return _mm512_permutexvar_ps(i, _mm512_load_ps(table)); }
  static bool any(M m) { return m != 0; }
  static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M ngt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_NGT_UQ); }
  static M unord(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static M mor(M a, M b) { return static_cast<M>(a | b); }
  static F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }  // as Avx2Lanes::max
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F clamp(F x, F lo, F hi) { return min(hi, max(lo, x)); }
  static F abs(F a) { return _mm512_abs_ps(a); }
  static I umax(I a, I b) { return _mm512_max_epu32(a, b); }
  static bool any_above(I a, uint32_t bound) {
    return _mm512_cmpgt_epu32_mask(a, seti(static_cast<int32_t>(bound))) != 0;
  }
};
#endif

// The lanes of this build's Vectorized<float>, where it has an intrinsic back end.
#if defined(CPU_CAPABILITY_AVX512)
using NativeLanes = Avx512Lanes;
#elif defined(CPU_CAPABILITY_AVX2)
using NativeLanes = Avx2Lanes;
#endif

// ---------------------------------------------------------------------------
// The algorithms.

// log(m) - 1 ... i.e. log1p(f) without its last addition: returns
// f^2 Q(f), to be added to f (and the correction terms) by the caller.
template <class O>
inline typename O::F log_poly_tail(typename O::F f) {
  using F = typename O::F;
  F q = O::set(kLogQ8);
  q = O::fma(q, f, O::set(kLogQ7));
  q = O::fma(q, f, O::set(kLogQ6));
  q = O::fma(q, f, O::set(kLogQ5));
  q = O::fma(q, f, O::set(kLogQ4));
  q = O::fma(q, f, O::set(kLogQ3));
  q = O::fma(q, f, O::set(kLogQ2));
  q = O::fma(q, f, O::set(kLogQ1));
  q = O::fma(q, f, O::set(kLogQ0));
  return O::mul(O::mul(f, f), q);
}

// x = 2^k m, m in [sqrt(1/2), sqrt(2)): returns the bits minus those of
// sqrt(1/2) (k in the exponent field) and sets m. Valid for positive normal x.
template <class O>
inline typename O::I split_exponent(typename O::F x, typename O::F& m) {
  using I = typename O::I;
  const I ix = O::isub(O::as_int(x), O::seti(kSqrtHalfBits));
  m = O::as_float(O::iadd(O::iand(ix, O::seti(0x007fffff)), O::seti(kSqrtHalfBits)));
  return ix;
}

// k ln 2 + y, k ln2_hi exact.
template <class O>
inline typename O::F add_k_ln2(typename O::F k, typename O::F y) {
  return O::fma(k, O::set(kLn2Hi), O::fma(k, O::set(kLn2Lo), y));
}

// log of a positive normal x (bits ix) by the table: k ln 2 + log(c) +
// log1p(r). kAdjusted: x was scaled by 2^23 (a denormal), take 23 off k.
template <class O, bool kAdjusted>
inline typename O::F log_by_table(typename O::F x, typename O::F k_adjust) {
  using F = typename O::F;
  using I = typename O::I;
  const I ix = O::as_int(x);
  const I tmp = O::isub(ix, O::seti(kLogTableOffBits));
  const I i = O::sra20(tmp);  // the interval in the low 3 bits
  const F invc = O::lookup8(kLogInvC, i);
  const F logc = O::lookup8(kLogLogC, i);
  F k = O::to_float(O::sra23(tmp));
  if constexpr (kAdjusted) k = O::add(k, k_adjust);
  const F z = O::as_float(O::isub(ix, O::iand(tmp, O::seti(static_cast<int32_t>(0xff800000u)))));
  const F r = O::fma(z, invc, O::set(-1.0f));  // z / c - 1, rounded once
  F q = O::fma(O::set(kLogR3), r, O::set(kLogR2));
  q = O::fma(q, r, O::set(kLogR1));
  q = O::fma(q, r, O::set(kLogR0));
  const F log1p_r = O::fma(O::mul(r, r), q, r);
  return O::add(O::fma(k, O::set(kLn2), logc), log1p_r);
}

// kSpecialValues = false: only for x in [0, 1] (-0 included), where the loss
// clamps the log at -100 anyway: +-0 -> -150 ln 2 = -103.97 (scaled as a
// denormal, 0 has k = -127 and z = 1), the rest as with them. Saves the
// special-value selects. Denormals and zeros are rare: a vector without any
// takes the table log alone (a branch, not selects, on every vector).
template <class O, bool kSpecialValues = true>
inline typename O::F log_impl(typename O::F x) {
  using F = typename O::F;
  const auto tiny = O::lt(x, O::set(kMinNormal));  // also true for x <= 0
  F r;
  if (O::any(tiny)) {
    // Denormals: scale by 2^23 (exact), take 23 off the exponent.
    const F xs = O::select(tiny, O::mul(O::abs(x), O::set(kTwo23)), x);
    r = log_by_table<O, true>(xs, O::select(tiny, O::set(-23.0f), O::set(0.0f)));
  } else {
    r = log_by_table<O, false>(x, O::set(0.0f));
  }
  if constexpr (!kSpecialValues) return r;
  // Not a positive finite number: 0 -> -inf, x < 0 -> NaN, NaN -> NaN,
  // +inf -> +inf (x + x quiets a signalling NaN and keeps +inf).
  const F inf = O::set(std::numeric_limits<float>::infinity());
  const auto special = O::mor(O::ngt(x, O::set(0.0f)), O::eq(x, inf));
  const F special_value =
      O::select(O::eq(x, O::set(0.0f)), O::set(-std::numeric_limits<float>::infinity()),
                O::select(O::lt(x, O::set(0.0f)), O::set(std::numeric_limits<float>::quiet_NaN()),
                          O::add(x, x)));
  return O::select(special, special_value, r);
}

// log of x in [1, 2] (positive normal): the table alone, no special values
// and no denormal branch. BCE-with-logits' log(1 + e^-|z|). Near 1 the table's
// interval has c = 1, so the result keeps its relative accuracy as x -> 1.
template <class O>
inline typename O::F log_one_to_two_impl(typename O::F x) {
  return log_by_table<O, false>(x, O::set(0.0f));
}

template <class O>
inline typename O::F log1p_impl(typename O::F x) {
  using F = typename O::F;
  using I = typename O::I;
  const F one = O::set(1.0f);
  // u = 1 + x and its rounding error c, exactly (Fast2Sum, larger first;
  // for x >= -1 the larger in magnitude is max(x, 1)). u >= 2^-24 or 0.
  const F hi = O::select(O::lt(one, x), x, one);
  const F lo = O::select(O::lt(one, x), one, x);
  const F u = O::add(hi, lo);
  const F c = O::sub(lo, O::sub(u, hi));
  F m;
  const I ix = split_exponent<O>(u, m);
  const I kbits = O::sra23(ix);
  const F k = O::to_float(kbits);
  const F fm = O::sub(m, one);
  // k = 0 (x in about [sqrt(1/2) - 1, sqrt(2) - 1)): m = u, and f = x itself
  // is the exact reduced argument; no correction.
  // k != 0 (|result| > 0.34): c / u = c 2^-k / (1 + f) ~= c 2^-k (1 - f +
  // f^2 - f^3) (relative error < 2.1% of a term below 2^-24), 2^-k built from
  // its bits (0 for k >= 127, where the correction is far below an ulp).
  const auto k_zero = O::eq(k, O::set(0.0f));
  const F f = O::select(k_zero, x, fm);
  const F two_minus_k = O::as_float(O::imax(O::isub(O::seti(0x3f800000), O::sll23(kbits)), O::seti(0)));
  const F inv_1pf = O::fma(fm, O::fma(fm, O::sub(one, fm), O::set(-1.0f)), one);
  const F d = O::select(k_zero, O::set(0.0f), O::mul(O::mul(c, two_minus_k), inv_1pf));
  const F y = O::add(f, O::add(log_poly_tail<O>(f), d));
  const F r = add_k_ln2<O>(k, y);
  // Specials on x: -1 -> -inf, x < -1 -> NaN, NaN -> NaN, +inf -> +inf;
  // +-0 -> +-0 (the sum above gives +0 for -0).
  const F minus_one = O::set(-1.0f);
  const F inf = O::set(std::numeric_limits<float>::infinity());
  const auto special = O::mor(O::mor(O::ngt(x, minus_one), O::eq(x, inf)), O::eq(x, O::set(0.0f)));
  const F special_value =
      O::select(O::eq(x, minus_one), O::set(-std::numeric_limits<float>::infinity()),
                O::select(O::lt(x, minus_one), O::set(std::numeric_limits<float>::quiet_NaN()),
                          O::add(x, x)));
  return O::select(special, special_value, r);
}

template <class O>
inline typename O::F exp_impl(typename O::F x) {
  using F = typename O::F;
  using I = typename O::I;
  const F xc = O::clamp(x, O::set(kExpMin), O::set(kExpMax));
  // n = round(x / ln 2): the shifter puts n in the low mantissa bits.
  const F shifted = O::fma(xc, O::set(kLog2e), O::set(kShifter));
  const F n = O::sub(shifted, O::set(kShifter));
  const I ni = O::isub(O::as_int(shifted), O::as_int(O::set(kShifter)));
  // r = x - n ln 2: n ln2_hi is exact and x - n ln2_hi is exact (Sterbenz).
  F r = O::fma(n, O::set(-kLn2Hi), xc);
  r = O::fma(n, O::set(-kLn2Lo), r);
  F p = O::set(kExpP4);
  p = O::fma(p, r, O::set(kExpP3));
  p = O::fma(p, r, O::set(kExpP2));
  p = O::fma(p, r, O::set(kExpP1));
  p = O::fma(p, r, O::set(kExpP0));
  const F e_r = O::add(O::set(1.0f), O::fma(O::mul(r, r), p, r));
  // times 2^n = 2^(n - n/2) 2^(n/2), n in [-150, 128]: both factors normal,
  // the first product exact, the second rounded once (denormal or inf).
  const I n1 = O::sra1(ni);
  const I n2 = O::isub(ni, n1);
  const F s1 = O::as_float(O::sll23(O::iadd(n1, O::seti(127))));
  const F s2 = O::as_float(O::sll23(O::iadd(n2, O::seti(127))));
  const F result = O::mul(O::mul(e_r, s2), s1);
  return O::select(O::unord(x), O::add(x, x), result);
}

// DEFAULT build: one lane at a time (the loop is branch-free and may be
// vectorized by the compiler); also the scalar entry points below.
template <float (*kFn)(float)>
inline at::vec::Vectorized<float> per_lane(const at::vec::Vectorized<float>& a) {
  using Vec = at::vec::Vectorized<float>;
  __at_align__ float buf[Vec::size()];
  a.store(buf);
  for (int i = 0; i < Vec::size(); ++i) buf[i] = kFn(buf[i]);
  return Vec::loadu(buf);
}

}  // namespace vec_math_detail

// ---------------------------------------------------------------------------
// Scalar entry points (one lane of the same algorithm).
inline float fast_log(float x) { return vec_math_detail::log_impl<vec_math_detail::ScalarLanes>(x); }
inline float fast_log1p(float x) { return vec_math_detail::log1p_impl<vec_math_detail::ScalarLanes>(x); }
inline float fast_log_one_to_two(float x) {
  return vec_math_detail::log_one_to_two_impl<vec_math_detail::ScalarLanes>(x);
}
inline float fast_exp(float x) { return vec_math_detail::exp_impl<vec_math_detail::ScalarLanes>(x); }

// Vector entry points.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
inline at::vec::Vectorized<float> fast_log(const at::vec::Vectorized<float>& x) {
  return vec_math_detail::log_impl<vec_math_detail::NativeLanes>(x);
}
inline at::vec::Vectorized<float> fast_log_unit_interval(const at::vec::Vectorized<float>& x) {
  return vec_math_detail::log_impl<vec_math_detail::NativeLanes, false>(x);
}
inline at::vec::Vectorized<float> fast_log1p(const at::vec::Vectorized<float>& x) {
  return vec_math_detail::log1p_impl<vec_math_detail::NativeLanes>(x);
}
inline at::vec::Vectorized<float> fast_log_one_to_two(const at::vec::Vectorized<float>& x) {
  return vec_math_detail::log_one_to_two_impl<vec_math_detail::NativeLanes>(x);
}
inline at::vec::Vectorized<float> fast_exp(const at::vec::Vectorized<float>& x) {
  return vec_math_detail::exp_impl<vec_math_detail::NativeLanes>(x);
}
#else
inline at::vec::Vectorized<float> fast_log(const at::vec::Vectorized<float>& x) {
  return vec_math_detail::per_lane<static_cast<float (*)(float)>(&fast_log)>(x);
}
inline at::vec::Vectorized<float> fast_log_unit_interval(const at::vec::Vectorized<float>& x) {
  return fast_log(x);  // per lane: the special values cost nothing worth saving
}
inline at::vec::Vectorized<float> fast_log1p(const at::vec::Vectorized<float>& x) {
  return vec_math_detail::per_lane<static_cast<float (*)(float)>(&fast_log1p)>(x);
}
inline at::vec::Vectorized<float> fast_log_one_to_two(const at::vec::Vectorized<float>& x) {
  return vec_math_detail::per_lane<static_cast<float (*)(float)>(&fast_log_one_to_two)>(x);
}
inline at::vec::Vectorized<float> fast_exp(const at::vec::Vectorized<float>& x) {
  return vec_math_detail::per_lane<static_cast<float (*)(float)>(&fast_exp)>(x);
}
#endif

}  // namespace CPU_CAPABILITY
}  // namespace vae_fused
