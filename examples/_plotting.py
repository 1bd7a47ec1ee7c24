"""What the example scripts share: matplotlib, imported only when a script plots."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or exit with the install line."""
    # Imported here, not at the top: the library never needs matplotlib, only the plots.
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install 'neuralode[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
