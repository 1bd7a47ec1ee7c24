"""Markdown pieces of REPORT.md."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(report_dir: Path, path: Path, caption: str) -> str:
    """An image link relative to the report, or a note when the figure is missing."""
    if not path.is_file():
        return f"*({caption}: figure not drawn)*"
    return f"![{caption}]({Path(os.path.relpath(path, report_dir)).as_posix()})"
