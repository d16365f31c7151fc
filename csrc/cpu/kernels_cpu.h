// The CPU per-element passes used by the settle loop (csrc/loop/settle_loop.h DeviceKernels).
#pragma once

#include <ATen/core/Tensor.h>

namespace eqkern {

// Elements a pass must touch per thread before it is split over threads. Larger than ATen's
// GRAIN_SIZE (32768): a parallel region waits for every pool thread, and on a 2-core machine that
// other processes keep busy a wake-up costs a scheduler slice (~6 ms measured, even for an op on
// 1000 elements) while a fused pass over 2^18 elements is well under a millisecond on one thread,
// so smaller passes run on the calling thread.
constexpr int64_t kParallelGrain = int64_t{1} << 18;

// state <- rho(alpha*u + gamma*d + n) over dense tensors that share one layout (d, n may be null).
void settle_epilogue_dense_cpu(at::Tensor& out, const at::Tensor& bottom_up, const at::Tensor* top_down,
                               const at::Tensor* nudge, double alpha, double gamma, int64_t activation);

// Fused 2x2 max-pool + unpool, see DeviceKernels::pool_unpool.
void pool_unpool_cpu(const at::Tensor& pre, at::Tensor* u, at::Tensor* unp, const at::Tensor* s,
                     const at::Tensor* s_sub, double scale);

}  // namespace eqkern
