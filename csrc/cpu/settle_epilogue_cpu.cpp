// CPU kernel of eqkern::settle_epilogue_ (math in ../settle_epilogue.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "settle_epilogue.h"
#include "settle_epilogue_args.h"

namespace eqkern {

// Elements per parallel_for task (ATen's at::internal::GRAIN_SIZE, which lives in a heavy header).
constexpr int64_t kGrainSize = 32768;

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

void settle_epilogue_cpu(at::Tensor& state, const at::Tensor& bottom_up,
                         const std::optional<at::Tensor>& top_down,
                         const std::optional<at::Tensor>& nudge, double alpha, double gamma,
                         int64_t activation) {
  TORCH_CHECK(state.device().is_cpu(), "eqkern.settle_epilogue_ (CPU kernel): state is on ",
              state.device());
  const SettleOperands ops = prepare_settle_operands(state, bottom_up, top_down, nudge, activation);
  const int64_t n = ops.out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, state.scalar_type(), "settle_epilogue_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;  // float for Half/BFloat16: one rounding, at the store
    scalar_t* out = ops.out.mutable_data_ptr<scalar_t>();
    const scalar_t* bu = ops.bottom_up.const_data_ptr<scalar_t>();
    const scalar_t* td = data_or_null<scalar_t>(ops.top_down);
    const scalar_t* nd = data_or_null<scalar_t>(ops.nudge);
    const acc_t a = static_cast<acc_t>(alpha);
    const acc_t g = static_cast<acc_t>(gamma);
    dispatch_activation(activation, [&](auto act) {
      constexpr int ACT = decltype(act)::value;
      // Contiguous chunks of at least kGrainSize elements: small layers stay single-threaded.
      at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
        settle_range<ACT>(out, bu, td, nd, a, g, begin, end);
      });
    });
  });
  ops.finish(state);
}

TORCH_LIBRARY_IMPL(eqkern, CPU, m) {
  m.impl("settle_epilogue_", &settle_epilogue_cpu);
}

}  // namespace eqkern
