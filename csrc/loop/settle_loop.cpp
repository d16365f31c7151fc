// eqkern::settle and eqkern::hebbian_update: the device-independent loops (see settle_loop.h).
//
// Per step and layer i (in place, in the order 0..N-1, as eqkern/backends/analytic.py):
//   pre      = W_{i+1} * s_i + b_{i+1}                     forward conv of the OLD state[i] (ATen)
//   u_{i+1}, unp = pool + unpool(state[i+1], argmax) of pre  one fused pass (DeviceKernels)
//   d_i      = conv_transpose(unp, W_{i+1})                 ATen (W_{i+1}^T s_{i+1} for FC)
//   n_N      = beta W_out^T (onehot - softmax(W_out s_N + b)) or beta (onehot - s_N)
//   state[i] = rho(alpha_i u_i + gamma_i d_i + n_i)         one fused pass (DeviceKernels)
// u_0 = P_0(W_0 * x + b_0) is computed once per call.
#include "settle_loop.h"

#include "checks.h"
#include "layout.h"
#include "nudge.h"
#include "skips.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/record_function.h>

#include <vector>

namespace eqkern {

namespace {

using at::Tensor;
using at::TensorList;
using Shape = std::vector<int64_t>;

Tensor conv_forward(const Tensor& s, const Tensor& w, const std::optional<Tensor>& b, int64_t pad) {
  return at::convolution(s, w, b, {1, 1}, {pad, pad}, {1, 1}, false, {0, 0}, 1);
}

Tensor conv_transposed(const Tensor& g, const Tensor& w, int64_t pad) {
  return at::convolution(g, w, std::nullopt, {1, 1}, {pad, pad}, {1, 1}, true, {0, 0}, 1);
}

// Validates the network description against x; returns each state layer's shape (batch first).
std::vector<Shape> check_network(const char* op, const Tensor& x, TensorList weights, TensorList biases,
                                 at::IntArrayRef kinds, at::IntArrayRef paddings, at::IntArrayRef pools) {
  const size_t n = weights.size();
  TORCH_CHECK(n >= 1, op, ": weights is empty (a network needs at least one layer)");
  TORCH_CHECK(biases.size() == n, op, ": biases has ", biases.size(), " tensors but weights has ", n);
  TORCH_CHECK(kinds.size() == n && paddings.size() == n && pools.size() == n, op,
              ": kinds, paddings and pools need one entry per layer (", n, "), got ", kinds.size(), ", ",
              paddings.size(), ", ", pools.size());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
              ": x must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK(x.dim() >= 2, op, ": x must be (batch, ...), got shape ", x.sizes());
  std::vector<Shape> shapes;
  Shape shape = x.sizes().vec();
  for (size_t i = 0; i < n; ++i) {
    const Tensor& w = weights[i];
    const Tensor& b = biases[i];
    check_same(op, w, idx_name("weights", i), x);
    check_same(op, b, idx_name("biases", i), x);
    if (kinds[i] == kConvLayer) {
      TORCH_CHECK(shape.size() == 4, op, ": layer ", i, " is a conv but its input has shape ", at::IntArrayRef(shape));
      TORCH_CHECK(w.dim() == 4 && w.size(1) == shape[1] && w.size(2) == w.size(3), op, ": weights[", i,
                  "] has shape ", w.sizes(), " but a conv on ", shape[1],
                  " input channels needs (out_channels, ", shape[1], ", k, k)");
      TORCH_CHECK(paddings[i] >= 0, op, ": paddings[", i, "] is ", paddings[i]);
      TORCH_CHECK(pools[i] == 0 || pools[i] == 1, op, ": pools[", i, "] must be 0 or 1, got ", pools[i]);
      int64_t h = shape[2] + 2 * paddings[i] - w.size(2) + 1, wd = shape[3] + 2 * paddings[i] - w.size(3) + 1;
      if (pools[i]) h /= 2, wd /= 2;
      TORCH_CHECK(h >= 1 && wd >= 1, op, ": layer ", i, " turns an input of shape ", at::IntArrayRef(shape),
                  " into an empty map");
      shape = {shape[0], w.size(0), h, wd};
    } else {
      TORCH_CHECK(kinds[i] == kLinearLayer, op, ": kinds[", i, "] must be 0 (conv) or 1 (linear), got ", kinds[i]);
      TORCH_CHECK(pools[i] == 0, op, ": pools[", i, "] must be 0 for a linear layer");
      int64_t f = 1;
      for (size_t d = 1; d < shape.size(); ++d) f *= shape[d];
      TORCH_CHECK(w.dim() == 2 && w.size(1) == f, op, ": weights[", i, "] has shape ", w.sizes(),
                  " but a linear layer on ", f, " input features needs (out_features, ", f, ")");
      shape = {shape[0], w.size(0)};
    }
    TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0), op, ": biases[", i, "] has shape ", b.sizes(),
                ", expected (", w.size(0), ")");
    shapes.push_back(shape);
  }
  return shapes;
}

void check_states(const char* op, const char* name, TensorList s, const std::vector<Shape>& shapes,
                  const Tensor& x) {
  TORCH_CHECK(s.size() == shapes.size(), op, ": ", name, " has ", s.size(), " tensors but the network has ",
              shapes.size(), " layers");
  for (size_t i = 0; i < s.size(); ++i) {
    check_same(op, s[i], idx_name(name, i), x);
    TORCH_CHECK(s[i].sizes() == at::IntArrayRef(shapes[i]), op, ": ", name, "[", i, "] has shape ", s[i].sizes(),
                ", expected ", at::IntArrayRef(shapes[i]));
  }
}

// Separate feedback weights: none at all (symmetric), or one per layer with none for layer 0 (it
// reads the clamped input and sends nothing down), each shaped like its forward weight.
void check_feedback_weights(const char* op, const Tensor& x, TensorList weights,
                            const c10::List<std::optional<Tensor>>& feedback) {
  if (feedback.empty()) return;
  TORCH_CHECK(feedback.size() == weights.size(), op, ": feedback_weights has ", feedback.size(),
              " entries but the network has ", weights.size(), " layers (or pass none: symmetric)");
  const std::optional<Tensor> first = feedback.get(0);
  TORCH_CHECK(!(first.has_value() && first->defined()), op, ": feedback_weights[0] must be None (layer 0 sends "
              "nothing down)");
  for (size_t i = 1; i < weights.size(); ++i) {
    const std::optional<Tensor> b = feedback.get(i);
    TORCH_CHECK(b.has_value() && b->defined(), op, ": feedback_weights[", i, "] is None");
    check_same(op, *b, idx_name("feedback_weights", i), x);
    TORCH_CHECK(b->sizes() == weights[i].sizes(), op, ": feedback_weights[", i, "] has shape ", b->sizes(),
                " but weights[", i, "] has shape ", weights[i].sizes());
  }
}

// Returns the one-hot targets (x's dtype) of the read-out, or an undefined tensor when not needed.
Tensor check_readout(const char* op, const Tensor& x, const Shape& last,
                     const std::optional<at::Tensor>& out_weight, const std::optional<at::Tensor>& out_bias,
                     const std::optional<at::Tensor>& targets, bool need_targets) {
  const bool ce = out_weight.has_value() && out_weight->defined();
  int64_t classes;
  if (ce) {
    int64_t f = 1;
    for (size_t d = 1; d < last.size(); ++d) f *= last[d];
    check_same(op, *out_weight, "out_weight", x);
    TORCH_CHECK(out_weight->dim() == 2 && out_weight->size(1) == f, op, ": out_weight has shape ",
                out_weight->sizes(), " but the last state layer has ", f, " features");
    TORCH_CHECK(out_bias.has_value() && out_bias->defined(), op, ": out_bias is missing (out_weight is given)");
    check_same(op, *out_bias, "out_bias", x);
    classes = out_weight->size(0);
    TORCH_CHECK(out_bias->dim() == 1 && out_bias->size(0) == classes, op, ": out_bias has shape ",
                out_bias->sizes(), ", expected (", classes, ")");
  } else {
    TORCH_CHECK(!(out_bias.has_value() && out_bias->defined()), op, ": out_bias given without out_weight");
    TORCH_CHECK(last.size() == 2, op, ": without out_weight (MSE read-out) the last state layer must be "
                "(batch, classes), got ", at::IntArrayRef(last));
    classes = last[1];
  }
  if (!need_targets) return Tensor();
  TORCH_CHECK(targets.has_value() && targets->defined(), op, ": targets are needed (beta != 0 or a read-out "
              "gradient) but missing");
  const Tensor& y = *targets;
  TORCH_CHECK(y.dim() == 1 && y.size(0) == x.size(0), op, ": targets has shape ", y.sizes(), ", expected (",
              x.size(0), ")");
  TORCH_CHECK(!at::isFloatingType(y.scalar_type()) && y.scalar_type() != at::kBool, op,
              ": targets must be integer class ids, got dtype ", y.scalar_type());
  TORCH_CHECK(y.device() == x.device(), op, ": targets is on ", y.device(), " but x is on ", x.device());
  return at::one_hot(y.to(at::kLong), classes).to(x.scalar_type());
}

}  // namespace

namespace {

// The working tensors of one settle call and the two schedules' steps over them.
class SettleRun {
 public:
  SettleRun(const DeviceKernels& k, const Tensor& x, TensorList weights, TensorList biases,
            at::IntArrayRef kinds, at::IntArrayRef paddings, at::IntArrayRef pools,
            at::IntArrayRef activations, at::ArrayRef<double> alphas, at::ArrayRef<double> gammas,
            const c10::List<std::optional<Tensor>>& feedback_weights, const std::vector<Shape>& shapes,
            TensorList state, const Nudges& nudges, Skips& skips)
      : k_(k), x_(x), biases_(biases), kinds_(kinds), paddings_(paddings), pools_(pools),
        activations_(activations), alphas_(alphas), gammas_(gammas), shapes_(shapes), nudges_(nudges),
        skips_(skips),
        lay_{use_channels_last(x)}, n_(shapes.size()), separate_(!feedback_weights.empty()), work_(n_), w_(n_),
        fb_w_(n_), u_buf_(n_), unp_buf_(n_), pre_(n_) {
    // Working states and weights in the layout the convolutions like (one copy pass for all);
    // the states are copied back at the end if they differ.
    LayoutBatch in(lay_);
    for (size_t i = 0; i < n_; ++i) {
      work_[i] = in.add(state[i]);
      w_[i] = in.add(weights[i]);
      if (separate_ && i > 0) fb_w_[i] = in.add(*feedback_weights.get(i));
    }
    const Tensor x_in = kinds[0] == kConvLayer ? in.add(x) : x;
    in.run();
    // u_0: constant over the call.
    if (kinds[0] == kConvLayer) {
      const Tensor pre = lay_.make(conv_forward(x_in, w_[0], biases[0], paddings[0]));
      if (pools[0]) {
        u0_ = lay_.empty(shapes[0], x);
        k.pool_unpool(pre, &u0_, nullptr, nullptr, nullptr, 1.0);
      } else {
        u0_ = pre;
      }
    } else {
      u0_ = at::addmm(biases[0], x.reshape({x.size(0), -1}), w_[0].t());
    }
  }

  // Synchronous: every layer from the old states. In place in the order 0..N-1: layer i's forward
  // conv (u_{i+1} and the pool argmax of s_i) runs before s_i is overwritten, and s_{i+1} is still
  // the old one when d_i is read. Layer i's epilogue waits for the next fused pool/unpool pass (or
  // the end of the step) and runs in the same parallel region: once d_i is known nothing reads the
  // old s_i any more, and one region instead of two saves a thread-pool wake-up (in_parts).
  void synchronous_step() {
    if (!skips_.empty()) skips_.compute(work_, std::vector<bool>(n_, true), lay_);  // all from the old states
    std::vector<Epilogue> waiting;
    Tensor u = u0_;
    for (size_t i = 0; i < n_; ++i) {
      Tensor u_next, d;
      if (i + 1 < n_) {
        const size_t j = i + 1;
        if (kinds_[j] == kConvLayer && pools_[j] && !separate_) {
          // one fused pass gives u_{i+1} and the unpooled s_{i+1} through the same argmax
          const Tensor pre = forward(j);
          ensure_pool_buffers(j, pre);
          RECORD_FUNCTION("eqkern::pool_unpool", std::vector<c10::IValue>());
          in_parts(pre.is_cpu(), pre.numel() + elements(waiting), [&](int64_t p, int64_t parts) {
            Tensor u_p = part(u_buf_[j], p, parts), unp_p = part(unp_buf_[j], p, parts);
            const Tensor s_p = part(work_[j], p, parts);
            k_.pool_unpool(part(pre, p, parts), &u_p, &unp_p, &s_p, nullptr, 1.0);
            for (const Epilogue& e : waiting) run(e, p, parts);
          });
          waiting.clear();
          u_next = u_buf_[j];
          d = lay_.make(conv_transposed(unp_buf_[j], w_[j], paddings_[j]));
        } else {
          u_next = pooled(j, forward(j));
          d = top_down(i);
        }
      }
      waiting.push_back(prepare(i, u, d));
      u = u_next;
    }
    RECORD_FUNCTION("eqkern::epilogue", std::vector<c10::IValue>());
    in_parts(x_.is_cpu(), elements(waiting), [&](int64_t p, int64_t parts) {
      for (const Epilogue& e : waiting) run(e, p, parts);
    });
  }

  // Alternating: the even layers from the current states, then the odd layers from the new even
  // ones. pre_[j] = W_j * s_{j-1} + b_j is kept until s_{j-1} changes, so each convolution still
  // runs once per step: the one that gives u_j in one half-step gives the argmax for d_{j-1} in
  // the other.
  void alternating_step() {
    for (size_t parity = 0; parity < 2; ++parity) {
      if (!skips_.empty()) {  // a link may join two layers of the group: read them all first
        std::vector<bool> group(n_);
        for (size_t i = 0; i < n_; ++i) group[i] = i % 2 == parity;
        skips_.compute(work_, group, lay_);
      }
      for (size_t i = parity; i < n_; i += 2) {
        const Tensor u = bottom_up(i);
        const Tensor d = top_down(i);
        epilogue(i, u, d);
        if (i + 1 < n_) pre_[i + 1] = Tensor();  // its input s_i changed
      }
    }
  }

  void write_back(TensorList state) const {
    std::vector<Tensor> dst, src;
    for (size_t i = 0; i < n_; ++i) {
      if (!work_[i].is_same(state[i])) dst.push_back(state[i]), src.push_back(work_[i]);
    }
    copy_all(dst, src);
  }

 private:
  Tensor forward(size_t j) const {
    const Tensor& s = work_[j - 1];
    if (kinds_[j] == kConvLayer) return lay_.make(conv_forward(s, w_[j], biases_[j], paddings_[j]));
    return at::addmm(biases_[j], s.reshape({s.size(0), -1}), w_[j].t());
  }

  Tensor cached_forward(size_t j) {
    if (!pre_[j].defined()) pre_[j] = forward(j);
    return pre_[j];
  }

  void ensure_pool_buffers(size_t j, const Tensor& pre) {
    if (!u_buf_[j].defined()) {
      u_buf_[j] = lay_.empty(shapes_[j], x_);
      unp_buf_[j] = lay_.empty(pre.sizes(), x_);
    }
  }

  // P_{j}(pre) into u_buf_[j] for a pooled conv j, else pre itself.
  Tensor pooled(size_t j, const Tensor& pre) {
    if (kinds_[j] != kConvLayer || !pools_[j]) return pre;
    ensure_pool_buffers(j, pre);
    k_.pool_unpool(pre, &u_buf_[j], nullptr, nullptr, nullptr, 1.0);
    return u_buf_[j];
  }

  // u_i = P_{i-1}(W_{i-1} * s_{i-1} + b_{i-1}) from the current s_{i-1}.
  Tensor bottom_up(size_t i) { return i == 0 ? u0_ : pooled(i, cached_forward(i)); }

  // d_i = conv_transpose(unpool(s_{i+1}, argmax), F_{i+1}) (F_{i+1}^T s_{i+1} for FC) from the
  // current states; F = W (symmetric, the argmax of W_{i+1} * s_i + b, kept in pre_: only the
  // alternating step gets here for a symmetric pooled conv, the synchronous one fuses it) or the
  // feedback weight B (the argmax of B_{i+1} * s_i, Laborieux App. D.3).
  Tensor top_down(size_t i) {
    if (i + 1 >= n_) return Tensor();
    const size_t j = i + 1;
    const Tensor& f = separate_ ? fb_w_[j] : w_[j];
    if (kinds_[j] != kConvLayer) return lay_.make(at::mm(work_[j], f).view(work_[i].sizes()));
    Tensor fb = work_[j];
    if (pools_[j]) {
      const Tensor argmax_of = separate_ ? lay_.make(conv_forward(work_[i], f, std::nullopt, paddings_[j]))
                                           : cached_forward(j);
      ensure_pool_buffers(j, argmax_of);
      k_.pool_unpool(argmax_of, nullptr, &unp_buf_[j], &work_[j], nullptr, 1.0);
      fb = unp_buf_[j];
    }
    return lay_.make(conv_transposed(fb, f, paddings_[j]));
  }

  // The operands of one layer's epilogue state[i] <- rho(alpha_i (u + skips up) + gamma_i (d + skips
  // down) + n_i); d may be undefined. n_i comes from the pre-update state[i] when it runs.
  struct Epilogue {
    size_t layer;
    Tensor u, d;
  };

  Epilogue prepare(size_t i, Tensor u, Tensor d) const {
    const Tensor& s = work_[i];
    if (!skips_.empty()) {
      if (skips_.up(i).defined()) u = lay_.make(u + skips_.up(i));  // out of place: u may be u0_
      if (skips_.down(i).defined()) d = d.add_(skips_.down(i));   // d is this layer's own
    }
    TORCH_INTERNAL_ASSERT(s.is_non_overlapping_and_dense() && same_layout(u, s) && (!d.defined() || same_layout(d, s)));
    return {i, std::move(u), std::move(d)};
  }

  static int64_t elements(const std::vector<Epilogue>& es) {
    int64_t n = 0;
    for (const Epilogue& e : es) n += e.u.numel();
    return n;
  }

  // The epilogue on part p of `parts` of the batch (in_parts), its nudge included: every term is
  // per sample, so any split gives the same result.
  void run(const Epilogue& e, int64_t p, int64_t parts) {
    Tensor s = part(work_[e.layer], p, parts);
    if (s.size(0) == 0) return;
    const Tensor d = e.d.defined() ? part(e.d, p, parts) : Tensor();
    const Tensor n = nudges_.of_layer(e.layer, s, lay_, p, parts);
    TORCH_INTERNAL_ASSERT(!n.defined() || same_layout(n, s));
    k_.epilogue(s, part(e.u, p, parts), d.defined() ? &d : nullptr, n.defined() ? &n : nullptr,
                alphas_[e.layer], gammas_[e.layer], activations_[e.layer]);
  }

  void epilogue(size_t i, Tensor u, Tensor d) {
    const Epilogue e = prepare(i, std::move(u), std::move(d));
    RECORD_FUNCTION("eqkern::epilogue", std::vector<c10::IValue>());
    run(e, 0, 1);
  }

  const DeviceKernels& k_;
  const Tensor& x_;
  TensorList biases_;
  at::IntArrayRef kinds_, paddings_, pools_, activations_;
  at::ArrayRef<double> alphas_, gammas_;
  const std::vector<Shape>& shapes_;
  const Nudges& nudges_;
  Skips& skips_;
  const Layout lay_;
  const size_t n_;
  const bool separate_;  // feedback weights B_j of their own (else the top-down terms use W_j)
  std::vector<Tensor> work_, w_, fb_w_;
  std::vector<Tensor> u_buf_, unp_buf_;  // reused across steps: every element is rewritten
  // alternating only (the synchronous step never reads it): W_j * s_{j-1} + b_j while s_{j-1} is unchanged
  std::vector<Tensor> pre_;
  Tensor u0_;
};

}  // namespace

void settle_loop(const DeviceKernels& k, const Tensor& x, TensorList weights, TensorList biases,
                 at::IntArrayRef kinds, at::IntArrayRef paddings, at::IntArrayRef pools,
                 at::IntArrayRef activations, at::ArrayRef<double> alphas, at::ArrayRef<double> gammas,
                 const c10::List<std::optional<Tensor>>& feedback_weights, const SkipArgs& skip_args,
                 const NudgeArgs& nudge_args, int64_t schedule, int64_t steps, TensorList state) {
  constexpr const char* op = "eqkern.settle";
  const auto shapes = check_network(op, x, weights, biases, kinds, paddings, pools);
  check_states(op, "state", state, shapes, x);
  const size_t n = shapes.size();
  TORCH_CHECK(activations.size() == n && alphas.size() == n && gammas.size() == n, op,
              ": activations, alphas and gammas need one entry per layer (", n, "), got ", activations.size(),
              ", ", alphas.size(), ", ", gammas.size());
  TORCH_CHECK(steps >= 0, op, ": steps must be >= 0, got ", steps);
  TORCH_CHECK(schedule == kSynchronous || schedule == kAlternating, op,
              ": schedule must be 0 (synchronous) or 1 (alternating), got ", schedule);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(at::has_internal_overlap(state[i]) != at::MemOverlap::Yes, op, ": state[", i,
                "] has internally overlapping memory (e.g. from expand)");
  }
  check_feedback_weights(op, x, weights, feedback_weights);
  const bool nudged = nudge_args.beta != 0.0 ||
                      (nudge_args.sample_betas.has_value() && nudge_args.sample_betas->defined());
  const Tensor onehot = check_readout(op, x, shapes.back(), nudge_args.out_weight, nudge_args.out_bias,
                                      nudge_args.targets, nudged);
  const Nudges nudges(op, x, shapes, nudge_args, onehot);
  Skips skips(op, x, shapes, skip_args);
  if (steps == 0) return;

  SettleRun run(k, x, weights, biases, kinds, paddings, pools, activations, alphas, gammas, feedback_weights, shapes,
                state, nudges, skips);
  for (int64_t t = 0; t < steps; ++t) {
    if (schedule == kAlternating) {
      run.alternating_step();
    } else {
      run.synchronous_step();
    }
  }
  run.write_back(state);
}

namespace {

// [a, b] or [a, -b] along the batch, in the layout `lay` picks: one pass over each input.
Tensor cat_batch(const Tensor& a, const Tensor& b, bool negate_b, const Layout& lay) {
  auto sizes = a.sizes().vec();
  const int64_t batch = sizes[0];
  sizes[0] = 2 * batch;
  Tensor out = lay.empty(sizes, a);
  out.narrow(0, 0, batch).copy_(a);
  Tensor lo = out.narrow(0, batch, batch);
  if (negate_b) {
    at::neg_out(lo, b);
  } else {
    lo.copy_(b);
  }
  return out;
}

}  // namespace

void hebbian_update_loop(const DeviceKernels& k, const Tensor& x, TensorList weights, TensorList biases,
                         at::IntArrayRef kinds, at::IntArrayRef paddings, at::IntArrayRef pools,
                         const std::optional<at::Tensor>& out_weight, const std::optional<at::Tensor>& out_bias,
                         const std::optional<at::Tensor>& targets, TensorList state_a, double beta_a,
                         TensorList state_b, double beta_b, TensorList grads) {
  constexpr const char* op = "eqkern.hebbian_update";
  const auto shapes = check_network(op, x, weights, biases, kinds, paddings, pools);
  check_states(op, "state_a", state_a, shapes, x);
  check_states(op, "state_b", state_b, shapes, x);
  TORCH_CHECK(beta_a != beta_b, op, ": beta_a and beta_b must differ, both are ", beta_a);
  const size_t n = shapes.size();
  const bool ce = out_weight.has_value() && out_weight->defined();
  const Tensor onehot = check_readout(op, x, shapes.back(), out_weight, out_bias, targets, ce);
  const size_t n_grads = 2 * n + (ce ? 2 : 0);
  TORCH_CHECK(grads.size() == n_grads, op, ": grads has ", grads.size(), " tensors, expected ", n_grads,
              " (weight and bias of every layer", ce ? ", then out_weight and out_bias)" : ")");
  for (size_t g = 0; g < n_grads; ++g) {
    const Tensor& p = g < 2 * n ? (g % 2 == 0 ? weights[g / 2] : biases[g / 2])
                                : (g == 2 * n ? *out_weight : *out_bias);
    check_same(op, grads[g], idx_name("grads", g), x);
    TORCH_CHECK(grads[g].sizes() == p.sizes(), op, ": grads[", g, "] has shape ", grads[g].sizes(),
                " but its parameter has shape ", p.sizes());
  }

  const Layout lay{use_channels_last(x)};
  const int64_t batch = x.size(0);
  const double scale = -1.0 / ((beta_a - beta_b) * static_cast<double>(batch));
  for (size_t i = 0; i < n; ++i) {
    const Tensor w = lay.make(weights[i]);
    Tensor gw;
    if (kinds[i] == kConvLayer) {
      Tensor inputs, signed_out;
      if (i == 0) {
        // Both phases see the same clamped x (so the same pool argmax): subtract the two phases
        // first. Half the FLOPs, and no fp32 cancellation between two large, nearly equal terms.
        inputs = lay.make(x);
        if (pools[0]) {
          const Tensor pre = lay.make(conv_forward(inputs, w, biases[0], paddings[0]));
          signed_out = lay.empty(pre.sizes(), x);
          const Tensor sa = lay.make(state_a[0]), sb = lay.make(state_b[0]);
          k.pool_unpool(pre, nullptr, &signed_out, &sa, &sb, 1.0);
        } else {
          signed_out = lay.make(state_a[0] - state_b[0]);
        }
      } else {
        inputs = cat_batch(state_a[i - 1], state_b[i - 1], false, lay);
        if (pools[i]) {
          // The argmax of each phase's own equilibrium: one forward conv over both phases.
          const Tensor pre = lay.make(conv_forward(inputs, w, biases[i], paddings[i]));
          signed_out = lay.empty(pre.sizes(), x);
          const Tensor sa = lay.make(state_a[i]), sb = lay.make(state_b[i]);
          Tensor out_a = signed_out.narrow(0, 0, batch), out_b = signed_out.narrow(0, batch, batch);
          k.pool_unpool(pre.narrow(0, 0, batch), nullptr, &out_a, &sa, nullptr, 1.0);
          k.pool_unpool(pre.narrow(0, batch, batch), nullptr, &out_b, &sb, nullptr, -1.0);
        } else {
          signed_out = cat_batch(state_a[i], state_b[i], true, lay);
        }
      }
      // The weight gradient only: the bias gradient is taken from the states below (output_mask).
      gw = std::get<1>(at::convolution_backward(signed_out, inputs, w, std::nullopt, {1, 1},
                                                {paddings[i], paddings[i]}, {1, 1}, false, {0, 0}, 1,
                                                {false, true, false}));
    } else {
      Tensor inputs, signed_out;
      if (i == 0) {
        inputs = x.reshape({batch, -1});
        signed_out = state_a[0] - state_b[0];
      } else {
        inputs = at::cat({state_a[i - 1].reshape({batch, -1}), state_b[i - 1].reshape({batch, -1})});
        signed_out = at::cat({state_a[i], state_b[i].neg()});
      }
      gw = at::mm(signed_out.t(), inputs);
    }
    // The bias term is sum(s_a) - sum(s_b) (unpooling moves values, it does not change their sum):
    // subtract first, so that fp32 does not cancel two large, nearly equal sums. That is why it is
    // not the reduction of signed_out above, which would cancel the phases inside the sum.
    const Tensor diff = state_a[i] - state_b[i];
    const Tensor gb = diff.dim() == 2 ? diff.sum(0) : diff.sum(at::IntArrayRef({0, 2, 3}));
    grads[2 * i].add_(gw, scale);
    grads[2 * i + 1].add_(gb, scale);
  }
  if (ce) {
    // (beta_a dL/dtheta(s_a) - beta_b dL/dtheta(s_b)) / ((beta_a - beta_b) batch), one GEMM.
    const Tensor feat_a = state_a[n - 1].reshape({batch, -1}), feat_b = state_b[n - 1].reshape({batch, -1});
    const Tensor err = at::cat({(at::softmax(at::addmm(*out_bias, feat_a, out_weight->t()), 1) - onehot) * beta_a,
                                (at::softmax(at::addmm(*out_bias, feat_b, out_weight->t()), 1) - onehot) * (-beta_b)});
    const Tensor feat = at::cat({feat_a, feat_b});
    const double norm = 1.0 / ((beta_a - beta_b) * static_cast<double>(batch));
    grads[2 * n].add_(at::mm(err.t(), feat), norm);
    grads[2 * n + 1].add_(err.sum(0), norm);
  }
}

}  // namespace eqkern
