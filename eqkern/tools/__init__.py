"""eqkern.tools."""
