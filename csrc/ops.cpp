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
  m.set_python_module("eqkern.ops");
  // Fused epilogue of one neuron update: state <- rho(alpha*bottom_up + gamma*top_down + nudge),
  // elementwise and in place; `activation` is a code of eqkern/activations.py ACTIVATION_CODES.
  m.def(
      "settle_epilogue_(Tensor(a!) state, Tensor bottom_up, Tensor? top_down, Tensor? nudge, "
      "float alpha, float gamma, int activation) -> ()");
}
