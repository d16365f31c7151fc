// CPU kernels of eqkern::settle and eqkern::hebbian_update: the loops of csrc/loop/settle_loop.cpp with
// the CPU fused passes (the epilogue of settle_epilogue_cpu.cpp and the pool/unpool below).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/kernels_cpu.h"
#include "math/pool_unpool.h"
#include "loop/settle_loop.h"

namespace eqkern {

namespace {

// The C channels of one window position in a channels-last map (channel stride 1): plain pointer
// loops over the branch-free math, unswitched on which outputs exist, so that g++ vectorizes them.
template <typename scalar_t, typename acc_t>
void channel_run(const scalar_t* __restrict__ p, int64_t sh, int64_t sw, scalar_t* __restrict__ u,
                 scalar_t* __restrict__ q, const scalar_t* __restrict__ s, const scalar_t* __restrict__ s2,
                 acc_t scale, int64_t C) {
  const scalar_t* __restrict__ p1 = p + sw;
  const scalar_t* __restrict__ p2 = p + sh;
  const scalar_t* __restrict__ p3 = p + sh + sw;
  auto load = [](scalar_t v) { return static_cast<acc_t>(v); };
  if (q != nullptr && u != nullptr) {  // settle: pooled drive and unpooled old state of the layer above
    scalar_t* __restrict__ q1 = q + sw;
    scalar_t* __restrict__ q2 = q + sh;
    scalar_t* __restrict__ q3 = q + sh + sw;
    for (int64_t c = 0; c < C; ++c) {
      acc_t m, o0, o1, o2, o3;
      pool2x2_unpool<acc_t>(load(p[c]), load(p1[c]), load(p2[c]), load(p3[c]), scale * load(s[c]), &m, &o0, &o1,
                            &o2, &o3);
      u[c] = static_cast<scalar_t>(m);
      q[c] = static_cast<scalar_t>(o0);
      q1[c] = static_cast<scalar_t>(o1);
      q2[c] = static_cast<scalar_t>(o2);
      q3[c] = static_cast<scalar_t>(o3);
    }
  } else if (q != nullptr) {  // Hebbian update: unpool only
    scalar_t* __restrict__ q1 = q + sw;
    scalar_t* __restrict__ q2 = q + sh;
    scalar_t* __restrict__ q3 = q + sh + sw;
    for (int64_t c = 0; c < C; ++c) {
      acc_t m, o0, o1, o2, o3;
      const acc_t v = s2 != nullptr ? unpool_value<scalar_t, acc_t>(s, s2, c, scale) : scale * load(s[c]);
      pool2x2_unpool<acc_t>(load(p[c]), load(p1[c]), load(p2[c]), load(p3[c]), v, &m, &o0, &o1, &o2, &o3);
      q[c] = static_cast<scalar_t>(o0);
      q1[c] = static_cast<scalar_t>(o1);
      q2[c] = static_cast<scalar_t>(o2);
      q3[c] = static_cast<scalar_t>(o3);
    }
  } else {  // the input drive: pool only
    for (int64_t c = 0; c < C; ++c) {
      acc_t m, o0, o1, o2, o3;
      pool2x2_unpool<acc_t>(load(p[c]), load(p1[c]), load(p2[c]), load(p3[c]), acc_t(0), &m, &o0, &o1, &o2, &o3);
      u[c] = static_cast<scalar_t>(m);
    }
  }
}

template <typename scalar_t>
const scalar_t* cptr(const at::Tensor* t) {
  return t != nullptr ? t->const_data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
scalar_t* mptr(at::Tensor* t) {
  return t != nullptr ? t->mutable_data_ptr<scalar_t>() : nullptr;
}

}  // namespace

void pool_unpool_cpu(const at::Tensor& pre, at::Tensor* u, at::Tensor* unp, const at::Tensor* s,
                     const at::Tensor* s_sub, double scale) {
  const int64_t B = pre.size(0), C = pre.size(1), H = pre.size(2), W = pre.size(3);
  const int64_t Ho = H / 2, Wo = W / 2;
  const at::Tensor* pooled = u != nullptr ? static_cast<const at::Tensor*>(u) : s;
  TORCH_INTERNAL_ASSERT(pooled != nullptr && (unp == nullptr || s != nullptr));
  TORCH_INTERNAL_ASSERT(unp == nullptr || same_layout(*unp, pre));
  TORCH_INTERNAL_ASSERT(s == nullptr || same_layout(*s, *pooled));
  TORCH_INTERNAL_ASSERT(s_sub == nullptr || same_layout(*s_sub, *pooled));
  TORCH_INTERNAL_ASSERT(u == nullptr || u->sizes() == at::IntArrayRef({B, C, Ho, Wo}));
  const int64_t pb = pre.stride(0), pc = pre.stride(1), ph = pre.stride(2), pw = pre.stride(3);
  const int64_t qb = pooled->stride(0), qc = pooled->stride(1), qh = pooled->stride(2), qw = pooled->stride(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "pool_unpool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* P = pre.const_data_ptr<scalar_t>();
    scalar_t* U = mptr<scalar_t>(u);
    scalar_t* Q = mptr<scalar_t>(unp);
    const scalar_t* S = cptr<scalar_t>(s);
    const scalar_t* S2 = cptr<scalar_t>(s_sub);
    const acc_t sc = static_cast<acc_t>(scale);
    const scalar_t zero = static_cast<scalar_t>(0);
    // One pooled position (b, c, ho, wo).
    auto element = [&](int64_t b, int64_t c, int64_t ho, int64_t wo) {
      const int64_t po = b * pb + c * pc + 2 * ho * ph + 2 * wo * pw;
      const int64_t qo = b * qb + c * qc + ho * qh + wo * qw;
      const acc_t v = S != nullptr ? unpool_value<scalar_t, acc_t>(S, S2, qo, sc) : acc_t(0);
      pool_unpool_element<scalar_t, acc_t>(P + po, ph, pw, U != nullptr ? U + qo : nullptr,
                                           Q != nullptr ? Q + po : nullptr, v);
    };
    if (pc == 1 && C > 1) {
      TORCH_INTERNAL_ASSERT(qc == 1, "pooled tensors must be channels-last like pre");
      // Channels-last: one task per (b, ho) row of windows, channels innermost (stride 1).
      const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, 4 * Wo * C));
      at::parallel_for(0, B * Ho, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t b = r / Ho, ho = r % Ho;
          for (int64_t wo = 0; wo < Wo; ++wo) {
            const int64_t po = b * pb + 2 * ho * ph + 2 * wo * pw, qo = b * qb + ho * qh + wo * qw;
            channel_run(P + po, ph, pw, U != nullptr ? U + qo : nullptr, Q != nullptr ? Q + po : nullptr,
                        S != nullptr ? S + qo : nullptr, S2 != nullptr ? S2 + qo : nullptr, sc, C);
          }
          if (Q == nullptr) continue;
          // Odd sizes: the row/column the pool dropped is zero in the unpooled map.
          if (W % 2 == 1) {
            for (int64_t dy = 0; dy < 2; ++dy) {
              scalar_t* q = Q + b * pb + (2 * ho + dy) * ph + (W - 1) * pw;
              for (int64_t c = 0; c < C; ++c) q[c * pc] = zero;
            }
          }
          if (H % 2 == 1 && ho == Ho - 1) {
            for (int64_t w = 0; w < W; ++w) {
              scalar_t* q = Q + b * pb + (H - 1) * ph + w * pw;
              for (int64_t c = 0; c < C; ++c) q[c * pc] = zero;
            }
          }
        }
      });
    } else {
      // Planar (NCHW): one task per (b, c) plane.
      const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, H * W));
      at::parallel_for(0, B * C, grain, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const int64_t b = p / C, c = p % C;
          for (int64_t ho = 0; ho < Ho; ++ho) {
            for (int64_t wo = 0; wo < Wo; ++wo) element(b, c, ho, wo);
          }
          if (Q == nullptr) continue;
          scalar_t* q = Q + b * pb + c * pc;
          if (W % 2 == 1) {
            for (int64_t h = 0; h < H; ++h) q[h * ph + (W - 1) * pw] = zero;
          }
          if (H % 2 == 1) {
            for (int64_t w = 0; w < W; ++w) q[(H - 1) * ph + w * pw] = zero;
          }
        }
      });
    }
  });
}

namespace {

const DeviceKernels kCpuKernels{&settle_epilogue_dense_cpu, &pool_unpool_cpu};

struct CpuScope {
  CpuScope(const at::Tensor& x, const char* op) {
    TORCH_CHECK(x.device().is_cpu(), op, " (CPU kernel): x is on ", x.device());
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(eqkern, CPU, m) {
  m.impl("settle", &settle_op<kCpuKernels, CpuScope>);
  m.impl("hebbian_update", &hebbian_update_op<kCpuKernels, CpuScope>);
}

}  // namespace eqkern
