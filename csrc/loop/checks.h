// Argument checks shared by the whole-network ops: errors name the op and the tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace eqkern {

inline void check_same(const char* op, const at::Tensor& t, const std::string& name, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but x has dtype ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

inline std::string idx_name(const char* list, size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }

}  // namespace eqkern
