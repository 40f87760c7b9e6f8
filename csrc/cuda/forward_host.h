// The host side of the CUDA op, shared with its CPU emulation: from the plan
// (csrc/plan.h) to allocations, kernel arguments and launches. `Backend`
// launches: the CUDA op's (vae_loss_cuda.cu) runs the kernels on the current
// stream; the emulation's (csrc/cuda_logic_probe.cpp) runs the same thread
// functions block by block on the CPU. No host sync: nothing here reads a
// tensor's value.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "../dtype_dispatch.h"
#include "../inputs.h"
#include "../plan.h"
#include "../reduction.h"
#include "term_pass.h"

namespace vae_fused::cuda_logic {

// Backend interface:
//   template <TA, TB, Rule> void term(const TermArgs&);   launches the term pass and its fold
//   template <T, S> void free_bits(const FreeBitsArgs&);  the three free-bits steps
template <typename Backend>
struct ForwardRunner {
  Backend& backend;

  // Allocates a term's outputs, fills its TermArgs; the launch is `launch`.
  template <typename Launch>
  void run_term(const TermPlan& plan, std::vector<at::Tensor>& grads, at::Tensor& value,
                at::Tensor& values, Launch&& launch) {
    TermArgs args;
    const bool extras = has_extras(plan);
    args.tiling = make_tiling(plan.rows, plan.cols, sums_per_row(plan));
    args.a = plan.a.data_ptr();
    args.b = plan.b.data_ptr();
    args.grad_scale = plan.reduction_scale;
    args.likelihood_half = plan.likelihood_half;
    args.reduction = plan.reduction;
    if (plan.wants_grad_a) {
      grads[plan.index_a] = at::empty_like(plan.a, plan.acc_options);  // the input's strides
      args.grad_a = grads[plan.index_a].data_ptr();
    }
    if (plan.wants_grad_b) {
      grads[plan.index_b] = at::empty_like(plan.b, plan.acc_options);
      args.grad_b = grads[plan.index_b].data_ptr();
    }
    int per_sample_extras = 0;
    for (int k = 0; k < plan.extra_count; ++k) {
      if (plan.extras[k].grad == ExtraGrad::kPerSample) ++per_sample_extras;
    }
    // One workspace: the term's partials, then each per-sample extra's.
    const int64_t tiles = args.tiling.tiles;
    at::Tensor work = at::empty({tiles * (1 + per_sample_extras)}, plan.a.options().dtype(at::kDouble));
    args.partials = work.data_ptr<double>();
    int slot = 1;
    uintptr_t addresses[4 + 2 * kMaxExtras] = {};
    int n_addresses = 0;
    for (int k = 0; k < plan.extra_count; ++k) {
      const ExtraPlan& extra = plan.extras[k];
      args.extra[k] = extra.operand;
      if (extra.operand.present() && !extra.operand.per_sample_constant()) {
        addresses[n_addresses++] = reinterpret_cast<uintptr_t>(extra.operand.data);
      }
      if (extra.grad == ExtraGrad::kPerSample) {
        args.extra_partials[k] = args.partials + tiles * slot++;
        grads[extra.index] = at::empty({plan.rows}, plan.acc_options);
        args.extra_rows[k] = grads[extra.index].data_ptr();
      } else if (extra.grad == ExtraGrad::kPerElement || extra.grad == ExtraGrad::kPerFeature) {
        // kPerFeature: stored per element here and summed over the samples
        // after the pass (the CPU pass sums it in place).
        grads[extra.index] = at::empty(plan.a.sizes(), plan.acc_options);
        args.extra_grad[k] = grads[extra.index].data_ptr();
        addresses[n_addresses++] = reinterpret_cast<uintptr_t>(args.extra_grad[k]);
      }
    }
    if (plan.keeps_values) {
      values = at::empty({plan.rows, plan.cols}, plan.acc_options);
      args.values = values.data_ptr();
    }
    for (const void* p : {args.a, args.b, static_cast<const void*>(args.grad_a),
                          static_cast<const void*>(args.grad_b), static_cast<const void*>(args.values)}) {
      addresses[n_addresses++] = reinterpret_cast<uintptr_t>(p);
    }
    args.vector_ok = all_aligned(addresses, n_addresses);
    value = per_sample(plan.reduction) ? at::empty({plan.rows}, plan.acc_options)
                                       : at::empty({}, plan.acc_options);
    args.value = value.data_ptr();
    at::Tensor ticket = at::zeros({1}, plan.a.options().dtype(at::kInt));
    args.ticket = reinterpret_cast<unsigned int*>(ticket.data_ptr<int>());
    launch(args, extras);
    const int64_t sample_dim = 0;
    for (int k = 0; k < plan.extra_count; ++k) {
      const ExtraPlan& extra = plan.extras[k];
      if (extra.grad == ExtraGrad::kPerFeature) {
        grads[extra.index] = grads[extra.index].sum(at::IntArrayRef(sample_dim), /*keepdim=*/true);
      }
    }
  }

  template <typename T>
  void free_bits(const TermPlan& plan, const at::Tensor& values, std::vector<at::Tensor>& grads,
                 at::Tensor& value) {
    using S = acc_type<T>;
    FreeBitsArgs f;
    f.values = values.data_ptr();
    f.rows = plan.rows;
    f.cols = plan.cols;
    f.reduction = plan.reduction;
    f.free_bits = plan.free_bits;
    const auto doubles = plan.a.options().dtype(at::kDouble);
    at::Tensor columns = at::empty({free_bits_chunks(plan.rows) * plan.cols}, doubles);
    // One block per kThreads columns, and one even with no columns (it writes the 0 term).
    at::Tensor blocks = at::empty({std::max<int64_t>(1, ceil_div(plan.cols, kThreads))}, doubles);
    at::Tensor keep = at::empty({plan.cols}, plan.a.options().dtype(at::kByte));
    at::Tensor ticket = at::zeros({1}, plan.a.options().dtype(at::kInt));
    f.column_partials = columns.data_ptr<double>();
    f.block_partials = blocks.data_ptr<double>();
    f.keep = keep.data_ptr<uint8_t>();
    f.ticket = reinterpret_cast<unsigned int*>(ticket.data_ptr<int>());
    value = at::empty({}, plan.acc_options);
    f.value = value.data_ptr();
    const int indices[4] = {kMu, kLogvar, kPriorMu, kPriorLogvar};
    for (int k = 0; k < 4; ++k) {
      const at::Tensor& g = grads[indices[k]];
      if (g.defined() && g.numel() == plan.rows * plan.cols) f.grads[k] = g.data_ptr();
    }
    backend.template free_bits<T, S>(f);
  }

  std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> operator()(
      const LossInputs& in, const LossOptions& opts, int64_t grad_mask) {
    const ForwardPlan plan = plan_forward(in, opts, grad_mask, /*keep_dense_layout=*/true);
    std::vector<at::Tensor> grads(LossInputs::kCount);
    at::Tensor recon_value, kl_value, unused, kl_values;
    run_term(plan.recon, grads, recon_value, unused, [&](const TermArgs& args, bool extras) {
      dispatch_recon_dtypes(plan.recon.a.scalar_type(), plan.recon.b.scalar_type(), [&](auto ta, auto tb) {
        using TA = typename decltype(ta)::type;
        using TB = typename decltype(tb)::type;
        dispatch_recon_mode(static_cast<int>(opts.recon_mode), [&](auto mode) {
          constexpr int kMode = decltype(mode)::value;
          if (extras) backend.template term<TA, TB, ReconRule<kMode, true>>(args);
          else backend.template term<TA, TB, ReconRule<kMode, false>>(args);
        });
      });
    });
    run_term(plan.kl, grads, kl_value, kl_values, [&](const TermArgs& args, bool extras) {
      TORCH_CHECK(plan.kl.a.scalar_type() == plan.kl.b.scalar_type(),
                  "vae_fused: mu and logvar must share a dtype");
      dispatch_float_dtype(plan.kl.a.scalar_type(), "mu/logvar", [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (extras) backend.template term<T, T, KlRule<true>>(args);
        else backend.template term<T, T, KlRule<false>>(args);
        if (plan.kl.keeps_values) free_bits<T>(plan.kl, kl_values, grads, kl_value);
      });
    });
    fill_unwanted_gradients(plan, grads);
    return {recon_value, kl_value, grads};
  }
};

}  // namespace vae_fused::cuda_logic
