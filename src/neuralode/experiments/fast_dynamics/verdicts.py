"""P6's acceptance: one regularised run against the unregularised one."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# The targets of P6 (docs/protocols.md): test NFE at most half, at most 0.3 accuracy
# points or 0.02 nats worse, training wall time no higher.
MAX_NFE_RATIO = 0.5
MAX_ACCURACY_LOSS = 0.003
MAX_NLL_GAIN = 0.02
MAX_TIME_RATIO = 1.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One run against ``none``: the numbers of P6's table and its verdict."""

    score_text: str
    delta_text: str
    test_nfe: float
    nfe_ratio: float
    nfe_f: float
    nfe_b: float
    seconds: float
    time_ratio: float
    misses: tuple[str, ...]

    @property
    def holds(self) -> bool:
        """Every target met."""
        return not self.misses

    @property
    def verdict(self) -> str:
        """``**holds**``, or ``**does NOT hold**`` with the targets it missed."""
        if self.holds:
            return "**holds**"
        return f"**does NOT hold** ({'; '.join(self.misses)})"


def judge(run: Mapping[str, Any], base: Mapping[str, Any], score: str) -> Outcome:
    """``run`` against the unregularised ``base``; ``score`` is ``accuracy`` or ``nll``."""
    nfe_ratio = run["test_nfe_forward"] / max(base["test_nfe_forward"], 1e-12)
    time_ratio = run["train_seconds"] / max(base["train_seconds"], 1e-12)
    misses = []
    if nfe_ratio > MAX_NFE_RATIO:
        misses.append(f"test NFE {nfe_ratio:.2f}× > {MAX_NFE_RATIO}×")
    if score == "accuracy":
        value, delta = run["test_accuracy"], run["test_accuracy"] - base["test_accuracy"]
        score_text, delta_text = f"{100 * value:.2f}%", f"{100 * delta:+.2f} points"
        if -delta > MAX_ACCURACY_LOSS:
            misses.append(f"{-100 * delta:.2f} points lost > {100 * MAX_ACCURACY_LOSS:.1f}")
    else:
        value, delta = run["test_nll"], run["test_nll"] - base["test_nll"]
        score_text = f"{value:.3f} ± {run['test_nll_stderr']:.3f} nats"
        delta_text = f"{delta:+.3f} nats"
        if delta > MAX_NLL_GAIN:
            misses.append(f"{delta:.3f} nats worse > {MAX_NLL_GAIN}")
    if time_ratio > MAX_TIME_RATIO:
        misses.append(f"training {time_ratio:.2f}× the time")
    history = run["history"]
    return Outcome(
        score_text=score_text,
        delta_text=delta_text,
        test_nfe=run["test_nfe_forward"],
        nfe_ratio=nfe_ratio,
        nfe_f=sum(r["nfe_forward"] for r in history) / len(history),
        nfe_b=sum(r["nfe_backward"] for r in history) / len(history),
        seconds=run["train_seconds"],
        time_ratio=time_ratio,
        misses=tuple(misses),
    )
