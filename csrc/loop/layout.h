// The memory layout the settle loop keeps its working tensors in (channels-last or contiguous).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#include <vector>

namespace eqkern {

// Elements a pass must touch per thread before it is split over threads. Larger than ATen's
// GRAIN_SIZE (32768): a parallel region waits for every pool thread, and on a 2-core machine that
// other processes keep busy a wake-up costs a scheduler slice (~6 ms measured, even for an op on
// 1000 elements) while a fused pass over 2^18 elements is well under a millisecond on one thread,
// so smaller passes run on the calling thread.
constexpr int64_t kParallelGrain = int64_t{1} << 18;

// oneDNN's fp32/bf16 convolutions are faster in channels-last on CPU (measured on Laborieux's VGG-5,
// bench/bench_settle.py); fp64 has no oneDNN path. EQKERN_CPP_CHANNELS_LAST=0|1 overrides.
inline bool use_channels_last(const at::Tensor& x) {
  const char* env = std::getenv("EQKERN_CPP_CHANNELS_LAST");
  if (env != nullptr && env[0] != '\0') return std::strcmp(env, "0") != 0;
  return x.is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

// Part p of `parts` of t along dim 0 (possibly empty).
inline at::Tensor part(const at::Tensor& t, int64_t p, int64_t parts) {
  const int64_t n = t.size(0), lo = n * p / parts;
  return t.narrow(0, lo, n * (p + 1) / parts - lo);
}

// f(p, parts) for every part p of work that splits along dim 0 (batch rows, output channels). On
// CPU, with at least kParallelGrain `elements` in all, the parts run in one parallel region, one per
// thread (the kernels and ATen ops that f runs then stay on their thread); else f(0, 1) runs the
// whole. Several passes in one region cost one wake-up of the thread pool, not one each: on a loaded
// CPU each wake-up costs milliseconds (see kParallelGrain).
template <typename F>
void in_parts(bool cpu, int64_t elements, const F& f) {
  const int64_t threads = at::get_num_threads();
  if (!cpu || elements < kParallelGrain || threads == 1 || at::in_parallel_region()) {
    f(int64_t{0}, int64_t{1});
    return;
  }
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) f(p, threads);
  });
}

// dst[k].copy_(src[k]) for every k, in one parallel region on CPU (in_parts).
inline void copy_all(const std::vector<at::Tensor>& dst, const std::vector<at::Tensor>& src) {
  if (dst.empty()) return;
  int64_t total = 0;
  for (const auto& t : dst) total += t.numel();
  in_parts(dst.front().is_cpu(), total, [&](int64_t p, int64_t parts) {
    for (size_t k = 0; k < dst.size(); ++k) part(dst[k], p, parts).copy_(part(src[k], p, parts));
  });
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

// Several tensors brought into one layout with one copy_all: add(t) is t itself when it already
// has the layout (as make(t) would be), else a new tensor that run() fills.
class LayoutBatch {
 public:
  explicit LayoutBatch(const Layout& lay) : lay_(lay) {}
  at::Tensor add(const at::Tensor& t) {
    if (t.is_contiguous(lay_.of(t.dim()))) return t;
    dst_.push_back(lay_.empty(t.sizes(), t));
    src_.push_back(t);
    return dst_.back();
  }
  void run() const { copy_all(dst_, src_); }

 private:
  const Layout& lay_;
  std::vector<at::Tensor> dst_, src_;
};

}  // namespace eqkern
