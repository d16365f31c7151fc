"""eqkern.kernels."""
