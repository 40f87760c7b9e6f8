// The per-element rules of the VAE loss, written once for every kernel.
//
// Every function is a template over V, the "lane" type: a scalar float/double
// (CUDA threads, scalar code) or an at::vec::Vectorized<float/double> (the CPU
// kernels). The few primitives the rules need (log, exp, max, select, ...)
// are defined below for scalars; csrc/cpu/vec_primitives.h overloads them for
// at::vec lanes and must be included before this header. So a rule is one
// piece of code for CPU and GPU, and this file holds math only.
//
// Each rule returns the element value and its derivatives side by side; a
// caller that does not need a derivative simply does not store it (the
// arithmetic is pure, so the compiler drops it).
#pragma once

#include <cmath>
#include <limits>

#include "codes.h"

#if defined(__CUDACC__)
#define VAE_FUSED_HD __host__ __device__ __forceinline__
#else
#define VAE_FUSED_HD inline
#endif

// The CPU kernel is compiled once per instruction set. Everything here must
// live in a namespace that differs between those builds: an inline function
// compiled with AVX-512 flags must never be merged by the linker with its
// baseline twin, or a non-AVX-512 machine could end up running it.
#if defined(CPU_CAPABILITY)
#define VAE_FUSED_ISA_NAMESPACE CPU_CAPABILITY
#else
#define VAE_FUSED_ISA_NAMESPACE generic
#endif

namespace vae_fused {
inline namespace VAE_FUSED_ISA_NAMESPACE {

// F.binary_cross_entropy clamps each log at -100 so that p in {0, 1} gives a
// finite loss, and divides its gradient by max(p(1-p), 1e-12) -- where its
// 1e-12 is a float constant in every dtype (9.99999996e-13 in double).
constexpr double kLogClamp = -100.0;
constexpr double kBceGradEps = static_cast<double>(1e-12f);

// ---------------------------------------------------------------------------
// Primitives, scalar. max/min follow std::max's rule ((a < b) ? b : a) so a
// NaN in `a` propagates, exactly as in PyTorch's BCE (fmax would drop it).
template <typename S>
VAE_FUSED_HD S vmax(S a, S b) { return (a < b) ? b : a; }
template <typename S>
VAE_FUSED_HD S vmin(S a, S b) { return (b < a) ? b : a; }
VAE_FUSED_HD float vlog(float a) { return ::logf(a); }
VAE_FUSED_HD double vlog(double a) { return ::log(a); }
// log of an argument in [0, 1], for the BCE logs: any value <= -100 may stand
// for log 0 (the loss clamps there), and arguments outside [0, 1] are errors
// whose value is never used. Scalars: the plain log.
template <typename S>
VAE_FUSED_HD S vlog_unit_interval(S a) { return vlog(a); }
// log of an argument in [1, 2] (BCE-with-logits' log(1 + e^-|z|)). Scalars:
// the plain log.
template <typename S>
VAE_FUSED_HD S vlog_one_to_two(S a) { return vlog(a); }
VAE_FUSED_HD float vlog1p(float a) { return ::log1pf(a); }
VAE_FUSED_HD double vlog1p(double a) { return ::log1p(a); }
VAE_FUSED_HD float vexp(float a) { return ::expf(a); }
VAE_FUSED_HD double vexp(double a) { return ::exp(a); }
VAE_FUSED_HD float vabs(float a) { return ::fabsf(a); }
VAE_FUSED_HD double vabs(double a) { return ::fabs(a); }
// n / d: IEEE division on the CPU (host scalars and vectors, see
// csrc/cpu/vec_primitives.h), so the BCE gradient (p - t) / max(p(1-p), eps)
// has exactly the bits of F.binary_cross_entropy's (tests/test_values.py).
template <typename S>
VAE_FUSED_HD S vdiv(S n, S d) { return n / d; }
// float on a CUDA device: the reciprocal plus one Newton step on the
// quotient (within an ulp of n / d for finite nonzero d, which is all the
// callers pass), instead of the IEEE division sequence -- not yet measured
// against it on a GPU.
VAE_FUSED_HD float vdiv(float n, float d) {
#if defined(__CUDA_ARCH__)
  const float r = __frcp_rn(d);
  const float q = n * r;
  return fmaf(r, fmaf(-d, q, n), q);
#else
  return n / d;
#endif
}
// select(c, a, b): a where c holds, else b (c is the result of a comparison).
template <typename S>
VAE_FUSED_HD S vselect(bool c, S a, S b) { return c ? a : b; }
template <typename S>
VAE_FUSED_HD bool vless(S a, S b) { return a < b; }
// vkeep_if(c, a): a where c holds, else +0 -- select(c, a, 0), which AVX2
// does in one and (a blend there costs GCC an extra compare) and AVX-512
// folds into the zero-masking of the operation that produced a.
template <typename S>
VAE_FUSED_HD S vkeep_if(bool c, S a) { return c ? a : S(0); }
// a * b + c with one rounding (fmaf on a CUDA device; the host scalar form
// serves the tests' CPU runs of the CUDA rules).
VAE_FUSED_HD float vfma(float a, float b, float c) { return ::fmaf(a, b, c); }
VAE_FUSED_HD double vfma(double a, double b, double c) { return ::fma(a, b, c); }

// ---------------------------------------------------------------------------
// Reconstruction rules. p: the model output (a probability, or a logit z for
// BCE-with-logits), t: the target. `loss` is the element loss, `d_input` its
// derivative in p (or z), `d_target` its derivative in t.

// log(1 - p) to the accuracy of PyTorch's log1p(-p), for the price of one
// log (a vector log1p costs about two). u = 1 - p is exact for p >= 1/2 (and
// the correction below is then exactly 0, also at p = 1); for p < 1/2 the
// rounding error of u, d = w - p with w = 1 - u (exact), is put back to first
// order:
//   log(1 - p) = log(u + d) ~= log(u) + d / u.
// |d| <= half an ulp of u, so 1/u may be approximated by 2 - u = 1 + w
// (relative error (1 - u)^2, vanishing exactly where d/u matters, as p -> 0),
// and d (1 + w) is one fma, d w + d: the result stays within a few 1e-8
// (float) / 1e-17 (double) relative of log1p(-p), with no division and no
// branch. log1m_correction(p, u) is that d (1 + w), u = 1 - p.
template <typename V>
VAE_FUSED_HD V log1m_correction(V p, V u) {
  const V w = V(1) - u;
  const V d = w - p;
  return vfma(d, w, d);
}
template <typename V>
VAE_FUSED_HD V log1m(V p) {
  const V u = V(1) - p;
  return vlog_unit_interval(u) + log1m_correction(p, u);
}

// BCE exactly as F.binary_cross_entropy, logs clamped at -100, from the
// unclamped log p and log(1 - p).
template <typename V>
VAE_FUSED_HD void bce_from_logs(V p, V t, V log_p_raw, V log_1mp_raw, V& loss, V& d_input,
                                V& d_target) {
  const V one(1);
  const V log_p = vmax(log_p_raw, V(kLogClamp));
  const V log_1mp = vmax(log_1mp_raw, V(kLogClamp));
  loss = (t - one) * log_1mp - t * log_p;
  d_input = vdiv(p - t, vmax((one - p) * p, V(kBceGradEps)));
  d_target = log_1mp - log_p;
}
template <typename V>
VAE_FUSED_HD void bce_value_and_grad(V p, V t, V& loss, V& d_input, V& d_target) {
  bce_from_logs(p, t, vlog_unit_interval(p), log1m(p), loss, d_input, d_target);
}

// BCE on logits z, as F.binary_cross_entropy_with_logits:
//   max(z, 0) - z t + log1p(exp(-|z|)),  d/dz = sigmoid(z) - t,  d/dt = -z,
// evaluated in PyTorch's arrangement (1 - t) z - log_sigmoid(z) so that the
// infinite logits give PyTorch's values too (NaN where it has 0 * inf).
// e = exp(-|z|) <= 1 never overflows. u = 1 + e in [1, 2] is shared by both
// halves: log1p(e) = log(u) + (e - (u - 1)) / u, u's rounding error (exact,
// below half an ulp of u) put back to first order -- one table log, no
// log1p -- and 1/u is sigmoid.
template <typename V>
VAE_FUSED_HD void bce_logits_value_and_grad(V z, V t, V& loss, V& d_input, V& d_target) {
  const V zero(0), one(1);
  const V e = vexp(zero - vabs(z));
  const V u = one + e;
  const V inv = vdiv(one, u);
  const V log1p_e = vlog_one_to_two(u) + (e - (u - one)) * inv;
  loss = (one - t) * z - vmin(z, zero) + log1p_e;
  // sigmoid(z) - t: z < 0: e/(1+e) - t; z >= 0: (1 - t) - e/(1+e), which
  // keeps e/(1+e)'s relative accuracy where sigmoid(z) - t cancels (t = 1,
  // large z) instead of rounding 1/(1+e) to 1 first.
  const V e_inv = e * inv;
  d_input = vselect(vless(z, zero), e_inv - t, (one - t) - e_inv);
  d_target = zero - z;
}

// Squared error, as F.mse_loss.
template <typename V>
VAE_FUSED_HD void mse_value_and_grad(V p, V t, V& loss, V& d_input, V& d_target) {
  const V diff = p - t;
  loss = diff * diff;
  d_input = V(2) * diff;
  d_target = V(0) - d_input;
}

// Absolute error, as F.l1_loss: d/dp = sign(p - t), 0 at a tie (and NaN for NaN).
template <typename V>
VAE_FUSED_HD void l1_value_and_grad(V p, V t, V& loss, V& d_input, V& d_target) {
  const V zero(0), one(1);
  const V diff = p - t;
  loss = vabs(diff);
  d_input = vselect(vless(zero, diff), one, vselect(vless(diff, zero), zero - one, diff * zero));
  d_target = zero - d_input;
}

// Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): BCE(p, t) - log C(p)
// with C(p) = 2 atanh(x) / x, x = 1 - 2p. 2 atanh(x) = log((1 + x)/(1 - x))
// = log(1 - p) - log(p): BCE's own two logs, taken on p itself (x rounds
// near p = 0, where atanh is steep), so log C costs one more log and no
// log1p. That form cancels as x -> 0, and d/dx log C = 1/((1-x^2) atanh x) -
// 1/x cancels catastrophically there; inside |x| < window both come from
// the series
//   log(atanh(x)/x) = sum_k c_k x^(2k),
// (eight terms), whose truncation error at the window edge is about the
// cancellation error just outside it (window 0.4 in float: both ~5e-7
// relative; 0.1 in double: ~3e-14). At p = 0 and 1, C is infinite.
template <typename S> struct CbceWindow;
template <> struct CbceWindow<float> { static constexpr double value = 0.4; };
template <> struct CbceWindow<double> { static constexpr double value = 0.1; };

// The series' coefficients (exact rationals), named rather than kept in an
// array so device code can use them as immediates.
constexpr double kLogAtanhC1 = 1.0 / 3.0;
constexpr double kLogAtanhC2 = 13.0 / 90.0;
constexpr double kLogAtanhC3 = 251.0 / 2835.0;
constexpr double kLogAtanhC4 = 3551.0 / 56700.0;
constexpr double kLogAtanhC5 = 22417.0 / 467775.0;
constexpr double kLogAtanhC6 = 147636491.0 / 3831077250.0;
constexpr double kLogAtanhC7 = 61425277.0 / 1915538625.0;
constexpr double kLogAtanhC8 = 9718892317.0 / 355245345000.0;

// log C(p) and its derivative in p, given log p and log(1 - p) unclamped
// (values below -100 may stand for log 0); S is the lanes' scalar type.
template <typename S, typename V>
VAE_FUSED_HD void cb_log_norm_value_and_grad(V p, V log_p, V log_1mp, V& log_c, V& d_log_c) {
  const V zero(0), one(1), two(2);
  const V x = one - two * p;
  const V y = x * x;
  // Series sum_k c_k y^k and its x-derivative sum_k 2k c_k x^(2k-1), by Horner.
  V series = ((((((V(kLogAtanhC8) * y + V(kLogAtanhC7)) * y + V(kLogAtanhC6)) * y +
                 V(kLogAtanhC5)) * y + V(kLogAtanhC4)) * y + V(kLogAtanhC3)) * y +
              V(kLogAtanhC2)) * y + V(kLogAtanhC1);
  V d_series = ((((((V(16 * kLogAtanhC8) * y + V(14 * kLogAtanhC7)) * y + V(12 * kLogAtanhC6)) * y +
                   V(10 * kLogAtanhC5)) * y + V(8 * kLogAtanhC4)) * y + V(6 * kLogAtanhC3)) * y +
                V(4 * kLogAtanhC2)) * y + V(2 * kLogAtanhC1);
  series = series * y;
  d_series = d_series * x;
  // Direct form, for 0 < p < 1 outside the window (its values inside, and at
  // p = 0 or 1, are never selected). 1 - x^2 = 4 p (1 - p), formed from p.
  // For denormal p the derivative exceeds the type's range: p (1 - p) is
  // held at the smallest normal (as BCE holds it at 1e-12), so the divisor
  // stays normal and the derivative finite (on CUDA a reciprocal of a
  // denormal is inf, and vdiv's Newton step NaN).
  const V two_atanh = log_1mp - log_p;
  const V log_ratio = vlog(vdiv(two_atanh, two * x));
  const V p_1mp = p * (one - p);
  const V divisor = V(4) * vmax(p_1mp, V(std::numeric_limits<S>::min())) * two_atanh;
  const V d_direct = vdiv(two, divisor) - vdiv(one, x);
  const auto inside = vless(vabs(x), V(CbceWindow<S>::value));
  // p = 0 or 1: log C = +inf, its derivative NaN (as the closed form gives).
  const auto interior = vless(zero, p_1mp);
  const V log_ratio_sel =
      vselect(inside, series, vselect(interior, log_ratio, V(std::numeric_limits<double>::infinity())));
  const V d_sel = vselect(inside, d_series,
                          vselect(interior, d_direct, V(std::numeric_limits<double>::quiet_NaN())));
  log_c = V(0.69314718055994530942) + log_ratio_sel;  // log 2 + log(atanh(x)/x)
  d_log_c = V(0) - two * d_sel;                        // dx/dp = -2
}

template <typename S, typename V>
VAE_FUSED_HD void cbce_value_and_grad(V p, V t, V& loss, V& d_input, V& d_target) {
  const V log_p = vlog_unit_interval(p);
  const V log_1mp = log1m(p);
  bce_from_logs(p, t, log_p, log_1mp, loss, d_input, d_target);
  V log_c, d_log_c;
  cb_log_norm_value_and_grad<S>(p, log_p, log_1mp, log_c, d_log_c);
  loss = loss - log_c;
  d_input = d_input - d_log_c;
}

// The rule of a recon mode (a compile-time ReconMode); S is the scalar type
// of the lanes (float or double), which picks the continuous Bernoulli window.
template <int kMode, typename S, typename V>
VAE_FUSED_HD void recon_value_and_grad(V p, V t, V& loss, V& d_input, V& d_target) {
  if constexpr (kMode == kBce) {
    bce_value_and_grad(p, t, loss, d_input, d_target);
  } else if constexpr (kMode == kBceLogits) {
    bce_logits_value_and_grad(p, t, loss, d_input, d_target);
  } else if constexpr (kMode == kMse) {
    mse_value_and_grad(p, t, loss, d_input, d_target);
  } else if constexpr (kMode == kL1) {
    l1_value_and_grad(p, t, loss, d_input, d_target);
  } else {
    static_assert(kMode == kCbce, "unknown recon mode");
    cbce_value_and_grad<S>(p, t, loss, d_input, d_target);
  }
}

// BCE on binary targets: where t is exactly 0 or 1 the loss needs one log,
// -max(log(t ? p : 1 - p), -100), the same value bce_value_and_grad gives
// (its other product is an exact zero). Gives the log-likelihood
// max(log(...), -100), the loss negated (exactly), which a sum can subtract
// instead of paying a negation. `t_not_one` is the comparison t != 1 (in a
// binary block, the lanes where t == 0): the mask that keeps log1m's
// correction is then the comparison itself, not its negation.
template <typename V, typename M>
VAE_FUSED_HD void bce_binary_target_log_likelihood_and_grad(V p, V t, M t_not_one, V& log_likelihood,
                                                           V& d_input) {
  const V u = V(1) - p;
  const V correction = vkeep_if(t_not_one, log1m_correction(p, u));
  log_likelihood = vmax(vlog_unit_interval(vselect(t_not_one, u, p)) + correction, V(kLogClamp));
  d_input = vdiv(p - t, vmax(u * p, V(kBceGradEps)));
}

// The likelihood options of latent-diffusion autoencoders and calibrated
// decoders around an element loss l (any recon mode):
//   l' = wh * ((l + o) e^-s + s),   wh = w * (1/2 for "mse" with s, else 1),
// with offset o, learned log-scale s and weight w (absent: o = 0, w = 1; no s:
// e^-s = 1 and s = 0, so l' = w (l + o)). Applied in place to a rule's value
// and derivatives; also gives dl'/ds and dl'/do (which is the factor that
// multiplies l's own derivatives).
template <typename V>
VAE_FUSED_HD void apply_likelihood_options(V log_scale, V inv_scale, V offset, V weight_half,
                                           V& value, V& d_input, V& d_target, V& d_log_scale,
                                           V& d_offset) {
  const V scaled = (value + offset) * inv_scale;
  value = weight_half * (scaled + log_scale);
  d_offset = weight_half * inv_scale;
  d_log_scale = weight_half * (V(1) - scaled);
  d_input = d_input * d_offset;
  d_target = d_target * d_offset;
}
// The same options when s, o and w are constant along a sample (a 0-d s, a
// per-sample perceptual offset): l' is affine in l there, so a sample's sums
// follow from its L = sum_j l over D elements, and every element's
// derivatives are l's times wh e^-s:
//   sum l' = wh (e^-s (L + D o) + D s),  sum dl'/ds = wh (D - e^-s (L + D o)),
//   sum dl'/do = wh e^-s D.
template <typename S>
VAE_FUSED_HD void likelihood_row_sums(S loss_sum, S cols, S log_scale, S inv_scale, S offset,
                                      S weight_half, S& value_sum, S& d_log_scale_sum,
                                      S& d_offset_sum, S& d_loss) {
  const S scaled_sum = (loss_sum + cols * offset) * inv_scale;
  value_sum = weight_half * (scaled_sum + cols * log_scale);
  d_log_scale_sum = weight_half * (cols - scaled_sum);
  d_loss = weight_half * inv_scale;
  d_offset_sum = d_loss * cols;
}
// The 1/2 of the Gaussian NLL: F.gaussian_nll_loss = 0.5 (log var + (p - t)^2 / var).
constexpr double likelihood_half(int mode, bool has_log_scale) {
  return (mode == kMse && has_log_scale) ? 0.5 : 1.0;
}

// ---------------------------------------------------------------------------
// KL(N(mu, exp(logvar)) || N(0, 1)) per latent unit:
//   -0.5 (1 + logvar - mu^2 - exp(logvar)),  d/dmu = mu,  d/dlogvar = 0.5 (exp(logvar) - 1).
template <typename V>
VAE_FUSED_HD void kl_value_and_grad(V mu, V logvar, V& kl, V& d_mu, V& d_logvar) {
  const V one(1), half(0.5);
  const V var = vexp(logvar);
  kl = V(-0.5) * (one + logvar - mu * mu - var);
  d_mu = mu;
  d_logvar = half * (var - one);
}

// KL(N(mu, e^logvar) || N(m, e^v)) per unit against a prior with mean m and
// log-variance v (VDVAE / NVAE per-layer KL, torch.distributions' formula):
//   0.5 (v - logvar + (e^logvar + (mu - m)^2) e^-v - 1)
// d/dmu = (mu - m) e^-v = -d/dm,  d/dlogvar = 0.5 (e^(logvar - v) - 1),
// d/dv = 0.5 (1 - (e^logvar + (mu - m)^2) e^-v).
template <typename V>
VAE_FUSED_HD void kl_prior_value_and_grad(V mu, V logvar, V prior_mu, V prior_logvar, V& kl,
                                          V& d_mu, V& d_logvar, V& d_prior_mu,
                                          V& d_prior_logvar) {
  const V zero(0), one(1), half(0.5);
  const V inv_prior_var = vexp(zero - prior_logvar);
  const V diff = mu - prior_mu;
  const V var_ratio = vexp(logvar - prior_logvar);
  const V spread = var_ratio + diff * diff * inv_prior_var;
  kl = half * (prior_logvar - logvar + spread - one);
  d_mu = diff * inv_prior_var;
  d_prior_mu = zero - d_mu;
  d_logvar = half * (var_ratio - one);
  d_prior_logvar = half * (one - spread);
}

}  // namespace VAE_FUSED_ISA_NAMESPACE
}  // namespace vae_fused
