"""Dense output: the solver's continuous extension, or cubic Hermite as a fallback."""

from .dense import DenseInterpolation
from .local import interpolate_rows, interpolate_step, needs_f1

__all__ = ["DenseInterpolation", "interpolate_rows", "interpolate_step", "needs_f1"]
