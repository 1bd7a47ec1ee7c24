"""Gradient methods: how a solve is differentiated."""

from ._base import AbstractAdjoint
from .direct import DirectAdjoint

__all__ = ["AbstractAdjoint", "DirectAdjoint"]
