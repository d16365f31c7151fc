// Torch-free CUDA kernel and launcher of the fused 2x2 max-pool + unpool (math in csrc/math/pool_unpool.h).
// Included by settle_cuda.cu (the torch ops) and compile_check.cu (nvcc-only CI gate).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../math/pool_unpool.h"

namespace eqkern {

constexpr int kPoolThreads = 256;
constexpr int kPoolBlocksPerSM = 8;

// Sizes of the pre-pool map (B, C, H, W), its strides (p*) and the strides of the pooled tensors
// (q*: u, s, s_sub share them). channels_last: c is the fastest index of the thread mapping.
struct PoolGeometry {
  int64_t B, C, H, W;
  int64_t pb, pc, ph, pw;
  int64_t qb, qc, qh, qw;
  bool channels_last;
};

// One thread per pooled element (grid-stride). The threads of the last pooled row / column also
// zero the row / column of the unpooled map that an odd size makes the pool drop.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPoolThreads)
pool_unpool_kernel(const scalar_t* pre, scalar_t* u, scalar_t* unp, const scalar_t* s, const scalar_t* s_sub,
                   acc_t scale, PoolGeometry g) {
  const int64_t Ho = g.H / 2, Wo = g.W / 2;
  const int64_t n = g.B * g.C * Ho * Wo;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t b, c, ho, wo, r = i;
    if (g.channels_last) {
      c = r % g.C; r /= g.C; wo = r % Wo; r /= Wo; ho = r % Ho; b = r / Ho;
    } else {
      wo = r % Wo; r /= Wo; ho = r % Ho; r /= Ho; c = r % g.C; b = r / g.C;
    }
    const int64_t po = b * g.pb + c * g.pc + 2 * ho * g.ph + 2 * wo * g.pw;
    const int64_t qo = b * g.qb + c * g.qc + ho * g.qh + wo * g.qw;
    const acc_t v = s != nullptr ? unpool_value<scalar_t, acc_t>(s, s_sub, qo, scale) : acc_t(0);
    pool_unpool_element<scalar_t, acc_t>(pre + po, g.ph, g.pw, u != nullptr ? u + qo : nullptr,
                                         unp != nullptr ? unp + po : nullptr, v);
    if (unp == nullptr) continue;
    const scalar_t z = static_cast<scalar_t>(acc_t(0));
    scalar_t* q = unp + b * g.pb + c * g.pc;
    const bool odd_w = (g.W & 1) && wo == Wo - 1, odd_h = (g.H & 1) && ho == Ho - 1;
    if (odd_w) {
      q[2 * ho * g.ph + (g.W - 1) * g.pw] = z;
      q[(2 * ho + 1) * g.ph + (g.W - 1) * g.pw] = z;
    }
    if (odd_h) {
      q[(g.H - 1) * g.ph + 2 * wo * g.pw] = z;
      q[(g.H - 1) * g.ph + (2 * wo + 1) * g.pw] = z;
    }
    if (odd_w && odd_h) q[(g.H - 1) * g.ph + (g.W - 1) * g.pw] = z;
  }
}

// Launches on `stream`; u, unp, s_sub may be null (s must be given when unp is). The caller checks
// the launch error (C10_CUDA_KERNEL_LAUNCH_CHECK in the torch op).
template <typename scalar_t, typename acc_t>
void launch_pool_unpool(const scalar_t* pre, scalar_t* u, scalar_t* unp, const scalar_t* s, const scalar_t* s_sub,
                        acc_t scale, PoolGeometry g, int num_sms, cudaStream_t stream) {
  const int64_t n = g.B * g.C * (g.H / 2) * (g.W / 2);
  if (n <= 0) return;  // a 0-block launch is an error
  const int64_t wanted = (n + kPoolThreads - 1) / kPoolThreads;
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kPoolBlocksPerSM;
  const unsigned int blocks = static_cast<unsigned int>(wanted < cap ? wanted : cap);
  pool_unpool_kernel<scalar_t, acc_t><<<blocks, kPoolThreads, 0, stream>>>(pre, u, unp, s, s_sub, scale, g);
}

}  // namespace eqkern
