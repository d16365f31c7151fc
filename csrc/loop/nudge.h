// The nudge terms n_i of eqkern::settle (the Python twin is eqkern.model.energy.layer_nudge):
//   read-out layer N:   n_N = -beta dL_EP/ds_N   = beta W_out^T (onehot - softmax(W_out s_N + b))  (CE)
//                                                or beta (onehot - s_N)                            (MSE)
//   augmented layer i:  n_i += -beta c_i M_i^T (softmax(flat(M_i s_i) / tau) - target_i)
// where M_i is the layer's map (LE projection B_i, KDW channel map, or none for KD), target_i the
// one-hot labels (LE) or the teacher's softmax(t_i / tau) (KD), and c_i = kappa / tau (LE) or
// kappa tau (KD). beta is one number, or one per sample (the +beta and -beta phases as one batch).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <vector>

namespace eqkern {

struct Layout;  // layout.h (kept out of this header: the .cu files include it)

struct NudgeArgs {
  const std::optional<at::Tensor>& out_weight;
  const std::optional<at::Tensor>& out_bias;
  const std::optional<at::Tensor>& targets;  // (batch,) class ids
  double beta;
  const std::optional<at::Tensor>& sample_betas;  // (batch,): replaces beta when given
  at::IntArrayRef aux_layers;
  const c10::List<std::optional<at::Tensor>>& aux_maps;  // (K, D) on flat(s_i), (C, C, 1, 1), or none
  at::TensorList aux_targets;                            // (batch, D_r): rows of probabilities
  at::ArrayRef<double> aux_scales;                       // c_i
  double aux_tau;
};

class Nudges {
 public:
  // Validates everything against x and the state shapes (batch first); `onehot` is the read-out's
  // one-hot targets (x's dtype), undefined when no read-out nudge is needed.
  Nudges(const char* op, const at::Tensor& x, const std::vector<std::vector<int64_t>>& shapes,
         const NudgeArgs& args, const at::Tensor& onehot);
  // Whether any layer is nudged (beta != 0, or per-sample betas given).
  bool active() const { return active_; }
  // n_i for the (pre-step) state s of layer i, laid out like s; undefined when layer i has none.
  // Every term is per sample: s may be part p of `parts` of the batch (layout.h part()), and the
  // per-sample constants (targets, betas) are cut the same way.
  at::Tensor of_layer(size_t i, const at::Tensor& s, const Layout& lay, int64_t p = 0, int64_t parts = 1) const;

 private:
  at::Tensor scaled(at::Tensor t, double factor, int64_t p, int64_t parts) const;  // t * factor * beta (per sample)
  at::Tensor aux_term(size_t a, const at::Tensor& s, const Layout& lay, int64_t p, int64_t parts) const;

  const NudgeArgs& args_;
  at::Tensor onehot_, betas_;  // betas_: (batch, 1) or undefined
  size_t last_;
  bool active_;
  std::vector<int64_t> aux_of_layer_;  // -1 or the index into the aux_* lists
};

}  // namespace eqkern
