// The whole-network settle loop and Hebbian update of eqkern::settle / eqkern::hebbian_update.
//
// Device-independent C++ on ATen (the convolutions go through ATen: oneDNN on CPU, cuDNN on GPU);
// the two fused per-element passes of a layer (pool + unpool, and the epilogue) are device kernels
// handed in through DeviceKernels, so csrc/cpu and csrc/cuda register the same loop with their own
// kernels. See eqkern/backends/cpp_backend.py for the Python side and eqkern/model/energy.py for the terms.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include "nudge.h"
#include "skips.h"

namespace eqkern {

struct DeviceKernels {
  // state <- rho(alpha*u + gamma*d + n), in place; u, d, n (d, n may be null) have state's sizes
  // and strides and all are non-overlapping and dense.
  void (*epilogue)(at::Tensor& state, const at::Tensor& u, const at::Tensor* d, const at::Tensor* n,
                   double alpha, double gamma, int64_t activation);
  // Fused 2x2 max-pool + unpool (csrc/math/pool_unpool.h) of pre: (B, C, H, W). u: (B, C, H/2, W/2)
  // pooled values (may be null); unp: like pre (may be null), scale*(s - s_sub) at each window's
  // argmax and 0 elsewhere, dropped odd rows/columns included; s, s_sub like u (s_sub may be null).
  // pre/unp share strides, and u/s/s_sub share strides.
  void (*pool_unpool)(const at::Tensor& pre, at::Tensor* u, at::Tensor* unp, const at::Tensor* s,
                      const at::Tensor* s_sub, double scale);
};

// Same sizes and the same strides on every dimension of size > 1 (the stride of a size-1 dimension
// never moves a pointer, and ATen does not normalise it: NCHW and channels-last differ there).
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

// Layer kinds of the `kinds` argument.
enum LayerKind : int64_t { kConvLayer = 0, kLinearLayer = 1 };
// Values of the `schedule` argument.
enum Schedule : int64_t { kSynchronous = 0, kAlternating = 1 };

void settle_loop(const DeviceKernels& k, const at::Tensor& x, at::TensorList weights,
                 at::TensorList biases, at::IntArrayRef kinds, at::IntArrayRef paddings,
                 at::IntArrayRef pools, at::IntArrayRef activations, at::ArrayRef<double> alphas,
                 at::ArrayRef<double> gammas, const c10::List<std::optional<at::Tensor>>& feedback_weights,
                 const SkipArgs& skips, const NudgeArgs& nudges, int64_t schedule, int64_t steps, at::TensorList state);

void hebbian_update_loop(const DeviceKernels& k, const at::Tensor& x, at::TensorList weights,
                         at::TensorList biases, at::IntArrayRef kinds, at::IntArrayRef paddings,
                         at::IntArrayRef pools, const std::optional<at::Tensor>& out_weight,
                         const std::optional<at::Tensor>& out_bias,
                         const std::optional<at::Tensor>& targets, at::TensorList state_a,
                         double beta_a, at::TensorList state_b, double beta_b, at::TensorList grads);

// The op entry points a device registers with TORCH_LIBRARY_IMPL: `Scope(x, op)` checks x's device
// (and, on CUDA, holds the device guard for the whole call), `K` holds the device's fused passes.
template <const DeviceKernels& K, typename Scope>
void settle_op(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::IntArrayRef kinds,
               at::IntArrayRef paddings, at::IntArrayRef pools, at::IntArrayRef activations,
               at::ArrayRef<double> alphas, at::ArrayRef<double> gammas,
               const c10::List<std::optional<at::Tensor>>& feedback_weights, at::IntArrayRef skip_sources,
               at::IntArrayRef skip_targets, at::IntArrayRef skip_factors, at::TensorList skip_weights,
               const std::optional<at::Tensor>& out_weight, const std::optional<at::Tensor>& out_bias,
               const std::optional<at::Tensor>& targets, double beta, const std::optional<at::Tensor>& sample_betas,
               at::IntArrayRef aux_layers, const c10::List<std::optional<at::Tensor>>& aux_maps,
               at::TensorList aux_targets, at::ArrayRef<double> aux_scales, double aux_tau, int64_t schedule,
               int64_t steps, at::TensorList state) {
  const Scope scope(x, "eqkern.settle");
  const SkipArgs skips{skip_sources, skip_targets, skip_factors, skip_weights};
  const NudgeArgs nudges{out_weight, out_bias, targets, beta, sample_betas, aux_layers,
                         aux_maps, aux_targets, aux_scales, aux_tau};
  settle_loop(K, x, weights, biases, kinds, paddings, pools, activations, alphas, gammas, feedback_weights, skips,
              nudges, schedule, steps, state);
}

template <const DeviceKernels& K, typename Scope>
void hebbian_update_op(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::IntArrayRef kinds,
                       at::IntArrayRef paddings, at::IntArrayRef pools, const std::optional<at::Tensor>& out_weight,
                       const std::optional<at::Tensor>& out_bias, const std::optional<at::Tensor>& targets,
                       at::TensorList state_a, double beta_a, at::TensorList state_b, double beta_b,
                       at::TensorList grads) {
  const Scope scope(x, "eqkern.hebbian_update");
  hebbian_update_loop(K, x, weights, biases, kinds, paddings, pools, out_weight, out_bias, targets, state_a, beta_a,
                      state_b, beta_b, grads);
}

}  // namespace eqkern
