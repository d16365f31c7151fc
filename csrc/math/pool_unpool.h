// Per-element math of the fused 2x2/stride-2 max-pool + unpool, shared by the CPU and CUDA kernels.
//
// For one pooled position p with window w(p) (4 pre-pool elements, row-major) of `pre`:
//   k        = argmax over w(p), first maximum in row-major order, NaN wins (ATen's max_pool2d rule,
//              so ties -- e.g. a window that only sees the bias -- pick the same element as ATen)
//   u[p]     = pre[w(p)_k]                                        (the pooled bottom-up drive)
//   unp[w_j] = (j == k) ? v : 0   for the 4 window elements j     (max_unpool2d of v at the argmax)
// where v is the value to unpool (the old state of the layer above, or a signed difference of two
// phases' states in the Hebbian update). Either output may be absent. No index tensor exists: the
// argmax is consumed right where it is found. Torch-free: compiles with g++ and with nvcc alone.
#pragma once

#include <math.h>
#include <stdint.h>

#include "settle_epilogue.h"  // EQKERN_HOST_DEVICE

namespace eqkern {

template <typename acc_t>
EQKERN_HOST_DEVICE bool nan_acc(acc_t v) {
  return v != v;
}

// One window, branch-free (selects only, so a CPU loop over channels vectorizes): v0..v3 are the
// window's values in row-major order; returns the max in *m and `value` at the argmax in *o0..*o3
// (0 elsewhere). The rule is ATen's: an element replaces the running max if it is greater or NaN.
template <typename acc_t>
EQKERN_HOST_DEVICE void pool2x2_unpool(acc_t v0, acc_t v1, acc_t v2, acc_t v3, acc_t value, acc_t* m,
                                       acc_t* o0, acc_t* o1, acc_t* o2, acc_t* o3) {
  // Only selects between values, each on one comparison: boolean algebra (&&, ||, even & and | on
  // the bools) is control flow to g++'s if-conversion, which then does not vectorize the loop.
  const acc_t z = acc_t(0);
  const bool t1 = (v1 > v0) | nan_acc(v1);
  const acc_t m1 = t1 ? v1 : v0;
  const acc_t a0 = t1 ? z : value, a1 = t1 ? value : z;
  const bool t2 = (v2 > m1) | nan_acc(v2);
  const acc_t m2 = t2 ? v2 : m1;
  const acc_t b0 = t2 ? z : a0, b1 = t2 ? z : a1, b2 = t2 ? value : z;
  const bool t3 = (v3 > m2) | nan_acc(v3);
  *m = t3 ? v3 : m2;
  *o0 = t3 ? z : b0;
  *o1 = t3 ? z : b1;
  *o2 = t3 ? z : b2;
  *o3 = t3 ? value : z;
}

// One pooled position through pointers: window at `pre` (top-left, h stride sh, w stride sw);
// `u` (the pooled value) and `unp` (the window of the unpooled map, strides of `pre`) may be null.
template <typename scalar_t, typename acc_t>
EQKERN_HOST_DEVICE void pool_unpool_element(const scalar_t* pre, int64_t sh, int64_t sw, scalar_t* u,
                                            scalar_t* unp, acc_t value) {
  acc_t m, o0, o1, o2, o3;
  pool2x2_unpool<acc_t>(static_cast<acc_t>(pre[0]), static_cast<acc_t>(pre[sw]), static_cast<acc_t>(pre[sh]),
                        static_cast<acc_t>(pre[sh + sw]), value, &m, &o0, &o1, &o2, &o3);
  if (u != nullptr) *u = static_cast<scalar_t>(m);
  if (unp != nullptr) {
    unp[0] = static_cast<scalar_t>(o0);
    unp[sw] = static_cast<scalar_t>(o1);
    unp[sh] = static_cast<scalar_t>(o2);
    unp[sh + sw] = static_cast<scalar_t>(o3);
  }
}

// The value unpooled at position p: scale * (s[p] - s_sub[p]) (s_sub may be null = 0).
template <typename scalar_t, typename acc_t>
EQKERN_HOST_DEVICE acc_t unpool_value(const scalar_t* s, const scalar_t* s_sub, int64_t i, acc_t scale) {
  acc_t v = static_cast<acc_t>(s[i]);
  if (s_sub != nullptr) v = v - static_cast<acc_t>(s_sub[i]);
  return scale * v;
}

}  // namespace eqkern
