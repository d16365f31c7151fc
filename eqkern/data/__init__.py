"""eqkern.data."""
