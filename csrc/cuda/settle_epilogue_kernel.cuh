// Torch-free CUDA kernel and launcher for the settle epilogue (math in csrc/math/settle_epilogue.h).
// Included by settle_epilogue_cuda.cu (the torch op) and compile_check.cu (nvcc-only CI gate).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../math/settle_epilogue.h"

namespace eqkern {

constexpr int kSettleThreads = 256;
// 2048 resident threads per SM on sm_80/sm_90 = 8 blocks of 256: one full wave, then grid-stride.
constexpr int kSettleBlocksPerSM = 8;

// Grid-stride loop: any grid size covers any n, so the launcher can cap the grid at one wave.
template <int ACT, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kSettleThreads)
settle_epilogue_kernel(scalar_t* state, const scalar_t* bottom_up, const scalar_t* top_down,
                       const scalar_t* nudge, acc_t alpha, acc_t gamma, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    settle_element<ACT>(state, bottom_up, top_down, nudge, alpha, gamma, i);
  }
}

// Launches on `stream`; all pointers are contiguous arrays of n elements (top_down / nudge may be
// null). Returns false for an unknown activation code (nothing launched). The caller checks the
// launch error (C10_CUDA_KERNEL_LAUNCH_CHECK in the torch op).
template <typename scalar_t, typename acc_t>
bool launch_settle_epilogue(scalar_t* state, const scalar_t* bottom_up, const scalar_t* top_down,
                            const scalar_t* nudge, acc_t alpha, acc_t gamma, int64_t activation,
                            int64_t n, int num_sms, cudaStream_t stream) {
  if (n <= 0) return dispatch_activation(activation, [](auto) {});  // a 0-block launch is an error
  const int64_t wanted = (n + kSettleThreads - 1) / kSettleThreads;
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kSettleBlocksPerSM;
  const unsigned int blocks = static_cast<unsigned int>(wanted < cap ? wanted : cap);
  return dispatch_activation(activation, [&](auto act) {
    settle_epilogue_kernel<decltype(act)::value><<<blocks, kSettleThreads, 0, stream>>>(
        state, bottom_up, top_down, nudge, alpha, gamma, n);
  });
}

}  // namespace eqkern
