"""Gradient methods: how a solve is differentiated."""

from ._base import AbstractAdjoint
from .backsolve import BacksolveAdjoint
from .checkpoint import CheckpointAdjoint
from .direct import DirectAdjoint

__all__ = ["AbstractAdjoint", "BacksolveAdjoint", "CheckpointAdjoint", "DirectAdjoint"]
