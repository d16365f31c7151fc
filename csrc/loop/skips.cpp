// Skip links of eqkern::settle: see skips.h for the math.
#include "skips.h"

#include <ATen/ATen.h>

#include "checks.h"
#include "layout.h"

namespace eqkern {

using at::Tensor;

Skips::Skips(const char* op, const Tensor& x, const std::vector<std::vector<int64_t>>& shapes,
             const SkipArgs& args)
    : args_(args), up_(shapes.size()), down_(shapes.size()) {
  const size_t n = args.sources.size();
  TORCH_CHECK(args.targets.size() == n && args.factors.size() == n && args.weights.size() == n, op,
              ": skip_sources, skip_targets, skip_factors and skip_weights need one entry per link (", n,
              "), got ", args.targets.size(), ", ", args.factors.size(), ", ", args.weights.size());
  const auto layers = static_cast<int64_t>(shapes.size());
  for (size_t k = 0; k < n; ++k) {
    const int64_t i = args.sources[k], j = args.targets[k], f = args.factors[k];
    TORCH_CHECK(0 <= i && i + 1 < j && j < layers, op, ": skip link ", k, " is (", i, ", ", j,
                "); a link needs 0 <= source < source + 1 < target < ", layers);
    const Tensor& w = args.weights[k];
    check_same(op, w, idx_name("skip_weights", k), x);
    const auto &src = shapes[i], &dst = shapes[j];
    int64_t src_dim = 1;
    for (size_t d = 1; d < src.size(); ++d) src_dim *= src[d];
    if (f == 0) {
      TORCH_CHECK(dst.size() == 2 && w.dim() == 2 && w.size(0) == dst[1] && w.size(1) == src_dim, op,
                  ": skip_weights[", k, "] has shape ", w.sizes(), " but a link into an FC layer of ",
                  dst.size() == 2 ? dst[1] : -1, " units from ", src_dim, " features needs (units, features)");
    } else {
      TORCH_CHECK(f >= 1 && src.size() == 4 && dst.size() == 4 && src[2] / f == dst[2] && src[3] / f == dst[3],
                  op, ": skip_factors[", k, "] is ", f, " but no ", f, "x", f, " average pool maps layer ", i,
                  " onto layer ", j);
      TORCH_CHECK(w.dim() == 4 && w.size(0) == dst[1] && w.size(1) == src[1] && w.size(2) == 1 && w.size(3) == 1,
                  op, ": skip_weights[", k, "] has shape ", w.sizes(), ", expected (", dst[1], ", ", src[1],
                  ", 1, 1)");
    }
  }
}

void Skips::compute(const std::vector<Tensor>& state, const std::vector<bool>& in_group, const Layout& lay) {
  for (size_t l = 0; l < up_.size(); ++l) up_[l] = down_[l] = Tensor();
  for (size_t k = 0; k < args_.sources.size(); ++k) {
    const auto i = static_cast<size_t>(args_.sources[k]), j = static_cast<size_t>(args_.targets[k]);
    const int64_t f = args_.factors[k];
    const Tensor& w = args_.weights[k];
    const Tensor &s_i = state[i], &s_j = state[j];
    if (in_group[j]) {  // R s_i into the target
      Tensor r;
      if (f == 0) {
        r = at::mm(s_i.reshape({s_i.size(0), -1}), w.t());
      } else {
        r = at::convolution(f == 1 ? s_i : at::avg_pool2d(s_i, {f, f}, {f, f}), w, std::nullopt, {1, 1}, {0, 0},
                            {1, 1}, false, {0, 0}, 1);
      }
      r = lay.make(r);
      up_[j] = up_[j].defined() ? up_[j].add_(r) : r;
    }
    if (in_group[i]) {  // R^T s_j into the source
      Tensor t;
      if (f == 0) {
        t = at::mm(s_j, w).view(s_i.sizes());
      } else {
        t = at::convolution(s_j, w, std::nullopt, {1, 1}, {0, 0}, {1, 1}, true, {0, 0}, 1);
        // the exact adjoint of the average pool: each value / f^2 over its window, dropped rows 0
        if (f > 1) t = at::avg_pool2d_backward(t, s_i, {f, f}, {f, f}, {0, 0}, false, true, std::nullopt);
      }
      t = lay.make(t);
      down_[i] = down_[i].defined() ? down_[i].add_(t) : t;
    }
  }
}

}  // namespace eqkern
