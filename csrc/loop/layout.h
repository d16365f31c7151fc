// The memory layout the settle loop keeps its working tensors in (channels-last or contiguous).
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>

namespace eqkern {

// oneDNN's fp32/bf16 convolutions are faster in channels-last on CPU (measured on Laborieux's VGG-5,
// bench/bench_settle.py); fp64 has no oneDNN path. EQKERN_CPP_CHANNELS_LAST=0|1 overrides.
inline bool use_channels_last(const at::Tensor& x) {
  const char* env = std::getenv("EQKERN_CPP_CHANNELS_LAST");
  if (env != nullptr && env[0] != '\0') return std::strcmp(env, "0") != 0;
  return x.is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

struct Layout {
  bool channels_last;
  at::MemoryFormat of(int64_t dim) const {
    return dim == 4 && channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  }
  at::Tensor make(const at::Tensor& t) const { return t.contiguous(of(t.dim())); }
  at::Tensor empty(at::IntArrayRef sizes, const at::Tensor& like) const {
    return at::empty(sizes, like.options().memory_format(of(static_cast<int64_t>(sizes.size()))));
  }
};

}  // namespace eqkern
