// FRE-RNN skip links inside the energy (eqkern/skips.py): Phi gains <s_j, R_ij s_i>, j > i + 1, so
// layer j gets R_ij s_i bottom-up (joining alpha_j u_j) and layer i gets R_ij^T s_j top-down
// (joining gamma_i d_i). R_ij: a (dim s_j, dim s_i) matrix on flat(s_i) into an FC layer (factor
// 0), or a (C_j, C_i, 1, 1) 1x1 conv after an f x f stride-f average pool into a conv layer
// (factor f >= 1; the pool drops the last rows/columns as floor division does).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <vector>

namespace eqkern {

struct Layout;

struct SkipArgs {
  at::IntArrayRef sources, targets, factors;
  at::TensorList weights;
};

class Skips {
 public:
  // Validates the links against x and the state shapes (batch first).
  Skips(const char* op, const at::Tensor& x, const std::vector<std::vector<int64_t>>& shapes,
        const SkipArgs& args);
  bool empty() const { return args_.sources.empty(); }
  // The skip terms of the layers with in_group[l] from the current states: up(j) for targets j,
  // down(i) for sources i. Call before any layer of the group is overwritten.
  void compute(const std::vector<at::Tensor>& state, const std::vector<bool>& in_group, const Layout& lay);
  const at::Tensor& up(size_t layer) const { return up_[layer]; }
  const at::Tensor& down(size_t layer) const { return down_[layer]; }

 private:
  const SkipArgs& args_;
  std::vector<at::Tensor> up_, down_;
};

}  // namespace eqkern
