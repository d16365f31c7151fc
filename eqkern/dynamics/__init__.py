"""eqkern.dynamics."""
