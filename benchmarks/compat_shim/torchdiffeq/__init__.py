"""A package named ``torchdiffeq`` that is neuralode.compat.

Put ``benchmarks/compat_shim`` first on ``PYTHONPATH`` and ``import torchdiffeq`` gives
neuralode's torchdiffeq-compatible API: the way benchmarks/run_torchdiffeq_tests.py runs
torchdiffeq's own test suite against neuralode.
"""

from neuralode.compat import *  # noqa: F403
from neuralode.compat import __all__, __version__  # noqa: F401
