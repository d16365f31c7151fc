// The CPU per-element passes used by the settle loop (csrc/loop/settle_loop.h DeviceKernels).
#pragma once

#include <ATen/core/Tensor.h>

#include "loop/layout.h"  // kParallelGrain

namespace eqkern {

// state <- rho(alpha*u + gamma*d + n) over dense tensors that share one layout (d, n may be null).
void settle_epilogue_dense_cpu(at::Tensor& out, const at::Tensor& bottom_up, const at::Tensor* top_down,
                               const at::Tensor* nudge, double alpha, double gamma, int64_t activation);

// Fused 2x2 max-pool + unpool, see DeviceKernels::pool_unpool.
void pool_unpool_cpu(const at::Tensor& pre, at::Tensor* u, at::Tensor* unp, const at::Tensor* s,
                     const at::Tensor* s_sub, double scale);

}  // namespace eqkern
