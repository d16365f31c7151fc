// CPU kernel of eqkern::settle_epilogue_ (math in csrc/math/settle_epilogue.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "math/settle_epilogue.h"
#include "loop/settle_epilogue_args.h"
#include "cpu/kernels_cpu.h"

namespace eqkern {

// The loop for one chunk, unswitched by hand on which optional inputs are present: with a literal
// nullptr the per-element checks fold away and g++ vectorizes the loop. It does not unswitch them
// itself here ("control flow in loop"), and the plain loop was measured several times slower.
template <int ACT, typename scalar_t, typename acc_t>
void settle_range(scalar_t* out, const scalar_t* bu, const scalar_t* td, const scalar_t* nd, acc_t alpha,
                  acc_t gamma, int64_t begin, int64_t end) {
  if (td != nullptr && nd != nullptr) {
    for (int64_t i = begin; i < end; ++i) settle_element<ACT>(out, bu, td, nd, alpha, gamma, i);
  } else if (td != nullptr) {
    for (int64_t i = begin; i < end; ++i) settle_element<ACT, scalar_t>(out, bu, td, nullptr, alpha, gamma, i);
  } else if (nd != nullptr) {
    for (int64_t i = begin; i < end; ++i) settle_element<ACT, scalar_t>(out, bu, nullptr, nd, alpha, gamma, i);
  } else {
    for (int64_t i = begin; i < end; ++i) {
      settle_element<ACT, scalar_t>(out, bu, nullptr, nullptr, alpha, gamma, i);
    }
  }
}

void settle_epilogue_dense_cpu(at::Tensor& out, const at::Tensor& bottom_up, const at::Tensor* top_down,
                               const at::Tensor* nudge, double alpha, double gamma, int64_t activation) {
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "settle_epilogue_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;  // float for Half/BFloat16: one rounding, at the store
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* bu = bottom_up.const_data_ptr<scalar_t>();
    const scalar_t* td = top_down != nullptr ? top_down->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* nd = nudge != nullptr ? nudge->const_data_ptr<scalar_t>() : nullptr;
    const acc_t a = static_cast<acc_t>(alpha);
    const acc_t g = static_cast<acc_t>(gamma);
    const bool known = dispatch_activation(activation, [&](auto act) {
      constexpr int ACT = decltype(act)::value;
      // Contiguous chunks of at least kParallelGrain elements: small layers stay single-threaded.
      at::parallel_for(0, n, kParallelGrain, [&](int64_t begin, int64_t end) {
        settle_range<ACT>(o, bu, td, nd, a, g, begin, end);
      });
    });
    TORCH_CHECK(known, "eqkern: unknown activation code ", activation,
                " (known: 0..", kNumActivations - 1, ", see eqkern/activations.py ACTIVATION_CODES)");
  });
}

void settle_epilogue_cpu(at::Tensor& state, const at::Tensor& bottom_up,
                         const std::optional<at::Tensor>& top_down,
                         const std::optional<at::Tensor>& nudge, double alpha, double gamma,
                         int64_t activation) {
  TORCH_CHECK(state.device().is_cpu(), "eqkern.settle_epilogue_ (CPU kernel): state is on ",
              state.device());
  SettleOperands ops = prepare_settle_operands(state, bottom_up, top_down, nudge, activation);
  settle_epilogue_dense_cpu(ops.out, ops.bottom_up, ops.top_down.defined() ? &ops.top_down : nullptr,
                            ops.nudge.defined() ? &ops.nudge : nullptr, alpha, gamma, activation);
  ops.finish(state);
}

TORCH_LIBRARY_IMPL(eqkern, CPU, m) {
  m.impl("settle_epilogue_", &settle_epilogue_cpu);
}

}  // namespace eqkern
