"""Progress bars (tqdm, the ``cli`` extra), drawn by rank 0 only."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from .extras import require

T = TypeVar("T")


class Progress:
    """A progress bar over an iterable, whose postfix shows the latest metrics.

    Args:
        items: What to iterate over.
        total: Its length, for the ETA.
        description: Text before the bar, e.g. ``"epoch 3/6"``.
        enabled: Draw nothing (and need no tqdm) when false.
    """

    def __init__(
        self, items: Iterable[T], *, total: int | None, description: str, enabled: bool
    ) -> None:
        self._items = items
        self._bar: Any = None
        if enabled:
            tqdm = require("tqdm").tqdm
            self._bar = tqdm(total=total, desc=description, leave=True, dynamic_ncols=True)

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            yield item
            if self._bar is not None:
                self._bar.update(1)

    def show(self, metrics: Mapping[str, float]) -> None:
        """Set the postfix, e.g. ``loss=0.31 acc=0.91 nfe_f=26 nfe_b=32``."""
        if self._bar is not None:
            self._bar.set_postfix({k: _short(v) for k, v in metrics.items()}, refresh=False)

    def close(self) -> None:
        """Finish the bar's line."""
        if self._bar is not None:
            self._bar.close()


def _short(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4g}"
