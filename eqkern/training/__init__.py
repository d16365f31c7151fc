"""eqkern.training."""
