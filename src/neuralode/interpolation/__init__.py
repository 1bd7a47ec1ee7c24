"""Dense output: the solver's continuous extension, or cubic Hermite as a fallback."""

from .dense import DenseInterpolation
from .local import interpolate_stacked, interpolate_step

__all__ = ["DenseInterpolation", "interpolate_stacked", "interpolate_step"]
