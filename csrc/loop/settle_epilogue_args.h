// Input checks and layout preparation shared by the CPU and CUDA impls of eqkern::settle_epilogue_.
// Torch-dependent (unlike settle_epilogue.h); compiled by g++ and by nvcc.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <optional>

#include "math/settle_epilogue.h"  // csrc/ is on the include path

namespace eqkern {

// Contiguous operands for the raw-pointer kernels. `out` aliases `state` when state is contiguous;
// otherwise it is a contiguous temporary that finish() copies back into state.
struct SettleOperands {
  at::Tensor out;
  at::Tensor bottom_up;
  at::Tensor top_down;  // undefined when absent (= 0)
  at::Tensor nudge;     // undefined when absent (= 0)
  bool copy_back = false;

  void finish(at::Tensor& state) const {
    if (copy_back) state.copy_(out);
  }
};

inline void check_like_state(const at::Tensor& t, const char* name, const at::Tensor& state) {
  TORCH_CHECK(t.sizes() == state.sizes(), "eqkern.settle_epilogue_: ", name, " has shape ", t.sizes(),
              " but state has shape ", state.sizes(), " (they must be equal, no broadcasting)");
  TORCH_CHECK(t.scalar_type() == state.scalar_type(), "eqkern.settle_epilogue_: ", name,
              " has dtype ", t.scalar_type(), " but state has dtype ", state.scalar_type());
  TORCH_CHECK(t.device() == state.device(), "eqkern.settle_epilogue_: ", name, " is on ", t.device(),
              " but state is on ", state.device());
}

inline SettleOperands prepare_settle_operands(const at::Tensor& state, const at::Tensor& bottom_up,
                                              const std::optional<at::Tensor>& top_down,
                                              const std::optional<at::Tensor>& nudge,
                                              int64_t activation) {
  const auto dtype = state.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "eqkern.settle_epilogue_: state must be float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(activation >= 0 && activation < kNumActivations,
              "eqkern.settle_epilogue_: unknown activation code ", activation,
              " (known: 0..", kNumActivations - 1, ", see eqkern/activations.py ACTIVATION_CODES)");
  // An expanded state (stride 0) would make several outputs land on one memory location.
  TORCH_CHECK(at::has_internal_overlap(state) != at::MemOverlap::Yes,
              "eqkern.settle_epilogue_: state has internally overlapping memory (e.g. from expand); "
              "pass a tensor that owns one location per element");
  check_like_state(bottom_up, "bottom_up", state);
  SettleOperands ops;
  ops.bottom_up = bottom_up.contiguous();
  if (top_down.has_value() && top_down->defined()) {
    check_like_state(*top_down, "top_down", state);
    ops.top_down = top_down->contiguous();
  }
  if (nudge.has_value() && nudge->defined()) {
    check_like_state(*nudge, "nudge", state);
    ops.nudge = nudge->contiguous();
  }
  // The old state is never read, so a non-contiguous state only needs an uninitialised temp.
  ops.copy_back = !state.is_contiguous();
  ops.out = ops.copy_back ? at::empty(state.sizes(), state.options()) : state;
  return ops;
}

template <typename scalar_t>
inline const scalar_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

}  // namespace eqkern
