// Per-element math of the fused settle epilogue, shared by the CPU and CUDA kernels.
//
//   state[i] = rho(alpha * bottom_up[i] + gamma * top_down[i] + nudge[i])
//
// top_down / nudge may be null (= 0). This header is torch-free on purpose: it compiles with g++
// alone (CPU kernel) and with nvcc alone (csrc/cuda/compile_check.cu, the CI gate that needs no
// CUDA build of torch). Keep enum Activation in sync with eqkern/activations.py ACTIVATION_CODES.
#pragma once

#include <math.h>
#include <stdint.h>

#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define EQKERN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define EQKERN_HOST_DEVICE inline
#endif

namespace eqkern {

enum Activation : int {
  kHardSigmoid = 0,              // clamp(u/2, 0, 1)
  kClamp01 = 1,                  // clamp(u, 0, 1)
  kHardSigmoidCourbariaux = 2,   // clamp((u+1)/2, 0, 1)
  kRelu = 3,                     // max(u, 0)
  kTanh = 4,                     // tanh(u)
  kNumActivations = 5,
};

// Written as "u < lo ? lo : ..." so that NaN propagates, as torch.clamp / torch.relu do.
template <typename acc_t>
EQKERN_HOST_DEVICE acc_t clamp_unit(acc_t u) {
  return u < acc_t(0) ? acc_t(0) : (u > acc_t(1) ? acc_t(1) : u);
}

// C math names rather than std:: ones: they have both host and device definitions under nvcc.
EQKERN_HOST_DEVICE float tanh_acc(float u) { return tanhf(u); }
EQKERN_HOST_DEVICE double tanh_acc(double u) { return tanh(u); }

// rho(u) for a compile-time activation, so that the element loop has no per-element switch.
// The operation order matches eqkern/activations.py, which keeps fp32 results bit-identical.
template <int ACT, typename acc_t>
EQKERN_HOST_DEVICE acc_t rho(acc_t u) {
  if constexpr (ACT == kHardSigmoid) {
    return clamp_unit(u * acc_t(0.5));
  } else if constexpr (ACT == kClamp01) {
    return clamp_unit(u);
  } else if constexpr (ACT == kHardSigmoidCourbariaux) {
    return clamp_unit((u + acc_t(1)) * acc_t(0.5));
  } else if constexpr (ACT == kRelu) {
    return u < acc_t(0) ? acc_t(0) : u;
  } else {
    static_assert(ACT == kTanh, "unknown activation code");
    return tanh_acc(u);
  }
}

// One element. scalar_t is the storage type (float, double, a 16-bit float); acc_t the compute
// type (float for 16-bit storage), so half inputs are rounded once, at the store.
// The null checks are loop-invariant: the compiler hoists them (CPU) or they are warp-uniform (GPU).
template <int ACT, typename scalar_t, typename acc_t>
EQKERN_HOST_DEVICE void settle_element(scalar_t* state,
                                       const scalar_t* bottom_up,
                                       const scalar_t* top_down,
                                       const scalar_t* nudge, acc_t alpha,
                                       acc_t gamma, int64_t i) {
  acc_t u = alpha * static_cast<acc_t>(bottom_up[i]);
  if (top_down != nullptr) u = u + gamma * static_cast<acc_t>(top_down[i]);
  if (nudge != nullptr) u = u + static_cast<acc_t>(nudge[i]);
  state[i] = static_cast<scalar_t>(rho<ACT>(u));
}

// Calls f(std::integral_constant<int, ACT>{}) for a runtime activation code; returns false (and
// calls nothing) for an unknown code, so callers can raise their own error. Host only.
template <typename F>
inline bool dispatch_activation(int64_t activation, F&& f) {
  switch (activation) {
    case kHardSigmoid: f(std::integral_constant<int, kHardSigmoid>{}); return true;
    case kClamp01: f(std::integral_constant<int, kClamp01>{}); return true;
    case kHardSigmoidCourbariaux: f(std::integral_constant<int, kHardSigmoidCourbariaux>{}); return true;
    case kRelu: f(std::integral_constant<int, kRelu>{}); return true;
    case kTanh: f(std::integral_constant<int, kTanh>{}); return true;
    default: return false;
  }
}

}  // namespace eqkern
