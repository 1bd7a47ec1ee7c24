"""Optional dependencies of the command-line layer, imported on use with a clear error."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str = "cli") -> ModuleType:
    """Import ``module`` or fail with the exact command that installs it.

    Args:
        module: Dotted module name, e.g. ``"matplotlib.pyplot"``.
        extra: The ``neuralode`` extra that provides it.

    Raises:
        ImportError: If the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed here but not installed; install the extra with: "
            f"pip install 'neuralode[{extra}]'"
        ) from exc
