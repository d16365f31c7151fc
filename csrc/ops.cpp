// Loads as the Python module eqkern._C and defines the schemas of all eqkern ops.
// Kernels are registered per device in cpu/*.cpp and cuda/*.cu (TORCH_LIBRARY_IMPL).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty module: importing eqkern._C only has to run the static TORCH_LIBRARY initialisers of
// this .so. No pybind11, so the Python limited API (one abi3 wheel for all CPython >= 3.10) works.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      NULL,  // doc
      -1,    // per-interpreter state size
      NULL,  // methods
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(eqkern, m) {
  // Fake (meta) kernels live in eqkern/ops.py; this tells torch where to import them from.
  m.set_python_module("eqkern.kernels.ops");
  // Fused epilogue of one neuron update: state <- rho(alpha*bottom_up + gamma*top_down + nudge),
  // elementwise and in place; `activation` is a code of eqkern/activations.py ACTIVATION_CODES.
  m.def(
      "settle_epilogue_(Tensor(a!) state, Tensor bottom_up, Tensor? top_down, Tensor? nudge, "
      "float alpha, float gamma, int activation) -> ()");
  // The whole settling loop of a network, in place on `state` (csrc/loop/settle_loop.cpp). Layer i:
  // kinds[i] 0 = conv (k x k stride 1, zero padding paddings[i], 2x2 max-pool if pools[i]) or
  // 1 = linear; activations[i] a code as above; alphas[i] / gammas[i] the forward / feedback scales.
  // Read-out: CE when out_weight/out_bias are given, else MSE on the last state layer. Nudge:
  // beta, or one beta per sample (sample_betas). LE/KD(W) nudges (csrc/loop/nudge.h) on the layers
  // aux_layers, through aux_maps (or none), towards aux_targets, scaled by aux_scales, at aux_tau.
  // schedule: 0 synchronous, 1 alternating (even layers, then odd layers from the new even ones).
  // feedback_weights: [] (symmetric: the top-down terms use the weights) or [None, B_1, ..., B_{N-1}]
  // (Laborieux's vector field: d_i through B_{i+1}, with the argmax of B_{i+1} * s_i).
  // skip_*: FRE-RNN skip links (csrc/loop/skips.h), one entry per link; empty lists for none.
  m.def(
      "settle(Tensor x, Tensor[] weights, Tensor[] biases, int[] kinds, int[] paddings, int[] pools, "
      "int[] activations, float[] alphas, float[] gammas, Tensor?[] feedback_weights, int[] skip_sources, "
      "int[] skip_targets, int[] skip_factors, Tensor[] skip_weights, Tensor? out_weight, "
      "Tensor? out_bias, Tensor? targets, float beta, Tensor? sample_betas, int[] aux_layers, Tensor?[] aux_maps, "
      "Tensor[] aux_targets, float[] aux_scales, float aux_tau, int schedule, int steps, "
      "Tensor(a!)[] state) -> ()");
  // The contrastive Hebbian update of all layers (and the CE read-out), added into `grads`
  // (weight, bias of every layer, then out_weight, out_bias):
  //   g = -[dPhi_{beta_a}/dtheta(state_a) - dPhi_{beta_b}/dtheta(state_b)] / ((beta_a - beta_b) batch)
  m.def(
      "hebbian_update(Tensor x, Tensor[] weights, Tensor[] biases, int[] kinds, int[] paddings, "
      "int[] pools, Tensor? out_weight, Tensor? out_bias, Tensor? targets, Tensor[] state_a, "
      "float beta_a, Tensor[] state_b, float beta_b, Tensor(a!)[] grads) -> ()");
}
