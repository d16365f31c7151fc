"""eqkern.learning."""
