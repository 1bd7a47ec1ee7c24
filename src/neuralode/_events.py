"""Events: a condition's zero crossing that stops a solve or changes its state.

:class:`Event` is what the user passes (``solve(..., event=...)``). The loop finds the
crossings (:mod:`neuralode.integrate.events`); this module validates the events and
returns what each sample met (:class:`EventLog`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Condition = Callable[..., torch.Tensor]
Jump = Callable[..., Any]


@dataclass(frozen=True)
class Event:
    """A zero crossing of ``condition(t, y)`` that stops the solve or changes its state.

    Attributes:
        condition: ``condition(t, y)`` returns a tensor whose elements are separate
            conditions (any shape) in joint mode; in per-sample mode (``batch_dims=1``)
            it receives one time per row and the rows of ``y`` (and the per-sample
            ``args``, as ``f`` does) and returns one value per row, ``(b,)``, or several
            per row, ``(b, E)``. An event happens where an element changes sign.
        direction: ``1``: only rising crossings (negative to positive) count; ``-1``:
            only falling ones; ``0`` (default): both.
        terminal: ``True`` (default): the sample stops at its first such event;
            an integer ``n``: it stops at its ``n``-th; ``False``: it never stops
            (the event only jumps, or is only recorded).
        jump: ``jump(t, y)`` (per-sample mode: ``jump(t, y, *args)`` on the rows that
            met the event) returns the state the solve continues from; ``None`` keeps it.
        points: At how many evenly spaced points of each accepted step (its end
            included) the condition is looked at (10 by default, as
            DifferentialEquations.jl). Two crossings closer together than one spacing are
            missed; ``1`` looks at the step's end only, the cheapest (the condition is
            evaluated once per step instead of ten times), for conditions that cross at
            most once per step. With several events, the largest ``points`` counts.

    Crossings are found on each accepted step's dense output, to the resolution of the
    clock (adjacent float64 times), in time order: a step with several crossings is cut
    at the first, and the solve goes on from there. The event time is the first time at
    which the condition is zero or on its new side. A value exactly zero keeps the side
    the condition was on (a condition that touches zero and turns back meets no event);
    a condition exactly zero at the initial time takes the side opposite to where it
    goes, so it meets an event at ``t0`` when it leaves zero in ``direction`` (as
    torchdiffeq and scipy do). After an event, the condition's side is read from the state
    it continues from (after the jump).
    """

    condition: Condition
    direction: int = 0
    terminal: bool | int = True
    jump: Jump | None = None
    points: int = 10

    def __post_init__(self) -> None:
        if not callable(self.condition):
            raise TypeError(
                f"Event(condition=...) must be callable as condition(t, y), got "
                f"{type(self.condition).__name__}"
            )
        if isinstance(self.direction, bool) or self.direction not in (-1, 0, 1):
            raise ValueError(
                f"Event(direction=...) must be 1 (rising), -1 (falling) or 0 (both), got "
                f"{self.direction!r}"
            )
        terminal = self.terminal
        if not isinstance(terminal, (bool, int)) or (
            not isinstance(terminal, bool) and terminal < 1
        ):
            raise ValueError(
                "Event(terminal=...) must be True (stop at the first event), False (never "
                f"stop) or a whole number n >= 1 (stop at the n-th), got {terminal!r}"
            )
        if isinstance(self.points, bool) or not isinstance(self.points, int) or self.points < 1:
            raise ValueError(
                "Event(points=...) must be a whole number >= 1 (points per step at which the "
                f"condition is looked at; 10 by default), got {self.points!r}"
            )
        if self.jump is not None and not callable(self.jump):
            raise TypeError(
                f"Event(jump=...) must be callable as jump(t, y) or None, got "
                f"{type(self.jump).__name__}"
            )

    @property
    def stop_after(self) -> int:
        """How many of its events stop a sample (0: never)."""
        if isinstance(self.terminal, bool):
            return int(self.terminal)
        return int(self.terminal)


def as_events(event: object) -> tuple[Event, ...]:
    """``solve(event=...)``: one :class:`Event` or a sequence of them, as a tuple."""
    events = (event,) if isinstance(event, Event) else event
    if not isinstance(events, Sequence) or not events:
        raise TypeError(
            "event must be a neuralode.Event or a tuple of them, e.g. "
            f"event=Event(lambda t, y: y[0]), got {type(event).__name__}"
        )
    for i, e in enumerate(events):
        if not isinstance(e, Event):
            raise TypeError(
                f"event[{i}] must be a neuralode.Event (wrap a condition function as "
                f"Event(condition)), got {type(e).__name__}"
            )
    return tuple(events)


@dataclass
class EventLog:
    """The events the loop met, in the order it met them (caller's time).

    Attributes:
        sample: Which sample met each event, ``(M,)`` (``0`` in joint mode).
        t: Event times, float64 ``(M,)``.
        event: Which :class:`Event` (its position in the tuple), ``(M,)``.
        element: Which element of that event's condition, ``(M,)``.
        stop: Whether the event stopped its sample, ``(M,)``.
    """

    sample: torch.Tensor
    t: torch.Tensor
    event: torch.Tensor
    element: torch.Tensor
    stop: torch.Tensor

    @staticmethod
    def empty(device: torch.device) -> EventLog:
        """No events."""
        none = torch.zeros(0, dtype=torch.long, device=device)
        times = torch.zeros(0, dtype=torch.float64, device=device)
        return EventLog(none, times, none, none, none.bool())

    def table(self, batch: int) -> EventTable:
        """The log as ``(batch, K)`` tables, one row per sample, in time order."""
        counts = torch.bincount(self.sample, minlength=batch)
        k = int(counts.max()) if batch and self.sample.numel() else 0
        order = torch.argsort(self.sample, stable=True)  # the log is in time order per sample
        sample = self.sample[order]
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(sample.numel(), device=sample.device) - first[sample]
        device = sample.device
        times = torch.full((batch, k), torch.nan, dtype=torch.float64, device=device)
        event = torch.full((batch, k), -1, dtype=torch.long, device=device)
        element = event.clone()
        stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        times[sample, slot] = self.t[order]
        event[sample, slot] = self.event[order]
        element[sample, slot] = self.element[order]
        stopped[sample] |= self.stop[order]
        return EventTable(times, event, element, counts, stopped)


@dataclass
class EventTable:
    """Each sample's events in time order, as ``(B, K)`` tables padded with NaN and ``-1``.

    Attributes:
        times: Event times (caller's time, float64).
        event: Which event.
        element: Which element of its condition.
        count: ``(B,)``: events met by each sample.
        stopped: ``(B,)``: whether the sample's last event stopped it.
    """

    times: torch.Tensor
    event: torch.Tensor
    element: torch.Tensor
    count: torch.Tensor
    stopped: torch.Tensor
