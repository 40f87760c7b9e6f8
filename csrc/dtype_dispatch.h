// The dtypes the kernels accept, written once for CPU and CUDA. A kernel is
// instantiated for each case through a generic callable that receives type
// tags: f(TypeTag<TA>{}, TypeTag<TB>{}).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace vae_fused {

template <typename T>
struct TypeTag {
  using type = T;
};

// Half types load into float lanes and accumulate in float; double stays double.
template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

// The dtype a term's value and the gradients of its broadcast options have.
inline c10::ScalarType acc_dtype(c10::ScalarType t) {
  return t == c10::ScalarType::Double ? c10::ScalarType::Double : c10::ScalarType::Float;
}

inline bool is_half(c10::ScalarType t) {
  return t == c10::ScalarType::Half || t == c10::ScalarType::BFloat16;
}

// The dtype the kernels read the target in, for a recon_x of dtype `recon`:
// recon_x's own, except that data of another dtype than a half-precision
// output is read as float32 (the autocast case: float32 data is read as it
// is, never rounded to half).
inline c10::ScalarType target_dtype(c10::ScalarType recon, c10::ScalarType target) {
  if (is_half(recon) && target != recon) return c10::ScalarType::Float;
  return recon;
}

// One dtype: double, float, bfloat16, half.
template <typename F>
decltype(auto) dispatch_float_dtype(c10::ScalarType t, const char* what, F&& f) {
  switch (t) {
    case c10::ScalarType::Double: return f(TypeTag<double>{});
    case c10::ScalarType::Float: return f(TypeTag<float>{});
    case c10::ScalarType::BFloat16: return f(TypeTag<c10::BFloat16>{});
    case c10::ScalarType::Half: return f(TypeTag<c10::Half>{});
    default: TORCH_CHECK_TYPE(false, "vae_fused: unsupported dtype for ", what, ": ", t);
  }
}

// The (recon_x, x) pair: equal dtypes, or a half recon_x with float32 x.
template <typename F>
decltype(auto) dispatch_recon_dtypes(c10::ScalarType recon, c10::ScalarType target, F&& f) {
  if (recon != target) {
    TORCH_CHECK_TYPE(is_half(recon) && target == c10::ScalarType::Float,
                     "vae_fused: unsupported dtype pair for the reconstruction term: ", recon,
                     " and ", target);
    if (recon == c10::ScalarType::Half) return f(TypeTag<c10::Half>{}, TypeTag<float>{});
    return f(TypeTag<c10::BFloat16>{}, TypeTag<float>{});
  }
  return dispatch_float_dtype(recon, "recon_x", [&](auto tag) {
    return f(tag, tag);
  });
}

}  // namespace vae_fused
