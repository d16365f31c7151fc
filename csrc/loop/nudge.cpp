// The nudge terms of eqkern::settle: see nudge.h for the math.
#include "nudge.h"

#include <ATen/ATen.h>

#include "checks.h"
#include "layout.h"

namespace eqkern {

using at::Tensor;

Nudges::Nudges(const char* op, const Tensor& x, const std::vector<std::vector<int64_t>>& shapes,
               const NudgeArgs& args, const Tensor& onehot)
    : args_(args), onehot_(onehot), last_(shapes.size() - 1), aux_of_layer_(shapes.size(), -1) {
  const int64_t batch = x.size(0);
  const auto& sb = args.sample_betas;
  const bool per_sample = sb.has_value() && sb->defined();
  if (per_sample) {
    TORCH_CHECK(sb->dim() == 1 && sb->size(0) == batch, op, ": sample_betas has shape ", sb->sizes(),
                ", expected (", batch, ")");
    TORCH_CHECK(at::isFloatingType(sb->scalar_type()), op, ": sample_betas must be floating point, got ",
                sb->scalar_type());
    TORCH_CHECK(sb->device() == x.device(), op, ": sample_betas is on ", sb->device(), " but x is on ", x.device());
    betas_ = sb->to(x.scalar_type()).view({batch, 1});
  }
  active_ = per_sample || args.beta != 0.0;

  const size_t n_aux = args.aux_layers.size();
  TORCH_CHECK(args.aux_maps.size() == n_aux && args.aux_targets.size() == n_aux && args.aux_scales.size() == n_aux,
              op, ": aux_layers, aux_maps, aux_targets and aux_scales need one entry per augmented layer (",
              n_aux, "), got ", args.aux_maps.size(), ", ", args.aux_targets.size(), ", ", args.aux_scales.size());
  TORCH_CHECK(n_aux == 0 || args.aux_tau > 0.0, op, ": aux_tau must be > 0, got ", args.aux_tau);
  for (size_t a = 0; a < n_aux; ++a) {
    const int64_t i = args.aux_layers[a];
    TORCH_CHECK(i >= 0 && i < static_cast<int64_t>(shapes.size()), op, ": aux_layers[", a, "] is ", i,
                " but the network has ", shapes.size(), " layers");
    TORCH_CHECK(aux_of_layer_[i] < 0, op, ": layer ", i, " appears twice in aux_layers");
    aux_of_layer_[i] = static_cast<int64_t>(a);
    const auto& shape = shapes[i];
    int64_t dim = 1;
    for (size_t d = 1; d < shape.size(); ++d) dim *= shape[d];
    int64_t readout_dim = dim;  // features of r = M_i(s_i)
    const std::optional<Tensor> map = args.aux_maps.get(a);
    if (map.has_value() && map->defined()) {
      check_same(op, *map, idx_name("aux_maps", a), x);
      if (map->dim() == 2) {
        TORCH_CHECK(map->size(1) == dim, op, ": aux_maps[", a, "] has shape ", map->sizes(), " but layer ", i,
                    " has ", dim, " features");
        readout_dim = map->size(0);
      } else {
        TORCH_CHECK(map->dim() == 4 && shape.size() == 4 && map->size(0) == shape[1] && map->size(1) == shape[1] &&
                        map->size(2) == 1 && map->size(3) == 1,
                    op, ": aux_maps[", a, "] has shape ", map->sizes(), "; a map of layer ", i,
                    " must be (K, ", dim, ") on its flattened state or a (C, C, 1, 1) channel map");
      }
    }
    const Tensor& t = args.aux_targets[a];
    check_same(op, t, idx_name("aux_targets", a), x);
    TORCH_CHECK(t.dim() == 2 && t.size(0) == batch && t.size(1) == readout_dim, op, ": aux_targets[", a,
                "] has shape ", t.sizes(), ", expected (", batch, ", ", readout_dim, ")");
  }
}

Tensor Nudges::scaled(Tensor t, double factor, int64_t p, int64_t parts) const {
  if (betas_.defined()) {
    const Tensor betas = part(betas_, p, parts);
    return factor == 1.0 ? t.mul_(betas) : t.mul_(betas * factor);
  }
  return t.mul_(args_.beta * factor);
}

Tensor Nudges::aux_term(size_t a, const Tensor& s, const Layout& lay, int64_t p, int64_t parts) const {
  const int64_t batch = s.size(0);
  const std::optional<Tensor> map = args_.aux_maps.get(a);
  const bool has_map = map.has_value() && map->defined();
  const bool channel_map = has_map && map->dim() == 4;
  Tensor r = s;
  if (channel_map) {
    r = at::convolution(s, *map, std::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, 1);
  } else if (has_map) {
    r = at::mm(s.reshape({batch, -1}), map->t());
  }
  // reshape copies a channels-last r into the logical (NCHW) order that the targets use
  Tensor err = at::softmax(r.reshape({batch, -1}).div(args_.aux_tau), 1).sub_(part(args_.aux_targets[a], p, parts));
  err = scaled(err, -args_.aux_scales[a], p, parts);
  Tensor back;
  if (channel_map) {
    back = at::convolution(err.view(r.sizes()), *map, std::nullopt, {1, 1}, {0, 0}, {1, 1}, true, {0, 0}, 1);
  } else if (has_map) {
    back = at::mm(err, *map).view(s.sizes());
  } else {
    back = err.view(s.sizes());
  }
  return lay.make(back);
}

Tensor Nudges::of_layer(size_t i, const Tensor& s, const Layout& lay, int64_t p, int64_t parts) const {
  if (!active_) return Tensor();
  Tensor nudge;
  if (i == last_) {
    const auto& ow = args_.out_weight;
    if (ow.has_value() && ow->defined()) {
      const Tensor feat = s.reshape({s.size(0), -1});
      const Tensor err = part(onehot_, p, parts) - at::softmax(at::addmm(*args_.out_bias, feat, ow->t()), 1);
      nudge = lay.make(scaled(at::mm(err, *ow), 1.0, p, parts).view(s.sizes()));
    } else {
      nudge = scaled(at::sub(part(onehot_, p, parts), s), 1.0, p, parts);
    }
  }
  const int64_t a = aux_of_layer_[i];
  if (a >= 0) {
    Tensor aux = aux_term(static_cast<size_t>(a), s, lay, p, parts);
    nudge = nudge.defined() ? nudge.add_(aux) : aux;
  }
  return nudge;
}

}  // namespace eqkern
