"""Events in the step loop: find a condition's crossing inside an accepted step, cut there.

One mechanism for both drivers: the joint driver is one row (``idx = [0]``), the
per-sample driver many. After every accepted step the :class:`Watcher` evaluates the
conditions at evenly spaced points of the step's dense output; an element that changed
side between two points, in the direction its event asks for, has a root there, found
by a bracketing (Illinois) iteration down to adjacent float64 times. A row meets its
roots in time order: events that only record are logged and the step goes on; the first
with a jump, or that stops the sample, cuts the step: the row continues from the event
time with the state the jump gives (or stops), and the rest of the step is discarded, so
the crossings after it are found by the steps that follow.

The watcher keeps, per sample, the last value and side of every condition element and
the number of events met, indexed by the sample's position in the caller's batch (so the
per-sample driver's compaction does not touch them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .._events import Event, EventLog
from .._problem import Problem
from ..interpolation import interpolate_stacked
from ..solvers._explicit_rk import AbstractSolver

# A bracket that did not halve in _SLOW iterations in a row is bisected, so the worst
# case is about 5 × 64 condition evaluations per root in float64; Illinois steps
# converge superlinearly on smooth conditions.
_SLOW = 4
_MAX_ITERATIONS = 400


class Cut(NamedTuple):
    """The rows whose step an event cut.

    Attributes:
        pos: Their positions among the rows the watcher was given, ``(H,)``.
        tau: Event time in forward time (float64), ``(H,)``; the step's end when the
            root is at the end.
        y: The state each continues from (after the jump), ``(H, N)``.
        stop: Whether the row stops there (its event is terminal for it), ``(H,)``.
        jumped: Whether its event has a jump (the state changed), ``(H,)``.
    """

    pos: torch.Tensor
    tau: torch.Tensor
    y: torch.Tensor
    stop: torch.Tensor
    jumped: torch.Tensor


def as_state(problem: Problem, y: torch.Tensor) -> Any:
    """Rows ``(n, N)`` of the flat state in the caller's structure.

    Joint: the one row, in the state's own shape (a ``(2, 3)`` state stays ``(2, 3)``).
    """
    if problem.batched:
        return problem.structure.unflatten(y)
    return problem.structure.unflatten(y[0].reshape(problem.y0.shape))


def as_rows(problem: Problem, state: Any) -> torch.Tensor:
    """A state in the caller's structure as rows ``(n, N)`` (:func:`as_state` undone)."""
    flat = problem.structure.flatten(state)
    return flat if problem.batched else flat.reshape(1, -1)


def call_on_rows(
    problem: Problem, fn: Callable[..., Any], t: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
) -> Any:
    """``fn(t, y, *args)`` on rows ``y`` in the caller's structure.

    Per-sample: ``t`` one time per row and ``args`` the rows ``idx`` of the per-sample
    args. Joint: one row, ``fn(t, y)`` with ``t`` 0-d.
    """
    state = as_state(problem, y)
    if problem.batched:
        return fn(t, state, *(a.index_select(0, idx) for a in problem.f.args))
    return fn(t[0], state)


class Watcher:
    """The events of one solve: their conditions' sides per sample, and the log."""

    def __init__(self, problem: Problem, solver: AbstractSolver, events: tuple[Event, ...]):
        self.problem, self.solver, self.events = problem, solver, events
        self.d = problem.direction
        self.batched = problem.batched
        self.log: list[tuple[torch.Tensor, ...]] = []
        # Set by start(), on the state's device: per column (condition element) its event,
        # direction and offset, the conditions' values and sides, and per event its count,
        # stop count and whether it jumps.
        self.col_event = self.col_dir = self.col_element = torch.zeros(0, dtype=torch.long)
        self.value = self.side = self.count = self.stop_after = self.has_jump = self.col_event
        self.points = max(e.points for e in events)

    # -- the user's functions on rows ------------------------------------------------

    def conditions(self, tau: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Every condition element at forward times ``tau`` on rows ``y``: ``(P, E)`` float64.

        ``idx``: the samples of the rows (their per-sample ``args``).
        """
        return torch.cat(self._evaluate(tau, y, idx), dim=1).to(torch.float64)

    def _evaluate(
        self, tau: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> list[torch.Tensor]:
        """Each event's condition on rows ``y``, ``(P, E_i)`` each."""
        problem = self.problem
        t = (self.d * tau).to(problem.f.t_dtype)
        if self.batched:
            return [
                _per_row(call_on_rows(problem, event.condition, t, y, idx), y.shape[0], i)
                for i, event in enumerate(self.events)
            ]
        # The joint state is one row; several rows are several times (a step's points).
        per_row = []
        for r in range(y.shape[0]):
            row = []
            for i, event in enumerate(self.events):
                g = call_on_rows(problem, event.condition, t[r : r + 1], y[r : r + 1], idx)
                if not isinstance(g, torch.Tensor) or not g.is_floating_point():
                    raise TypeError(
                        f"event[{i}]'s condition(t, y) must return a floating tensor, got "
                        f"{_describe(g)}"
                    )
                row.append(g.reshape(1, -1))
            per_row.append(row)
        return [torch.cat(parts) for parts in zip(*per_row, strict=True)]

    def jump(
        self, event: int, tau: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        """The state after ``events[event]``'s jump on rows ``y`` at forward times ``tau``."""
        problem = self.problem
        jump = self.events[event].jump
        if jump is None:
            return y
        t = (self.d * tau).to(problem.f.t_dtype)
        after = call_on_rows(problem, jump, t, y, idx)
        _check_jump(after, as_state(problem, y), event)
        return as_rows(problem, after)

    # -- the loop's calls ---------------------------------------------------------------

    def start(self, tau0: torch.Tensor, y0: torch.Tensor) -> None:
        """The conditions at the initial state of every sample (``(B,)``, ``(B, N)``)."""
        idx = torch.arange(y0.shape[0], device=y0.device)
        parts = self._evaluate(tau0, y0, idx)
        value = torch.cat(parts, dim=1).to(torch.float64)
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise ValueError(
                "an event's condition is not finite at the initial state "
                f"({int(bad.sum())} values): conditions must be finite where the solve runs"
            )
        device = y0.device
        sizes = torch.tensor([p.shape[1] for p in parts], device=device)
        self.col_event = torch.repeat_interleave(torch.arange(len(parts), device=device), sizes)
        directions = torch.tensor([e.direction for e in self.events], device=device)
        self.col_dir = directions[self.col_event].to(value.dtype)
        offsets = torch.cumsum(sizes, 0) - sizes
        self.col_element = torch.arange(value.shape[1], device=device) - offsets[self.col_event]
        self.value, self.side = value, torch.sign(value)
        self.count = torch.zeros(y0.shape[0], len(self.events), dtype=torch.long, device=device)
        stop_after = [e.stop_after for e in self.events]
        self.stop_after = torch.tensor(stop_after, dtype=torch.long, device=device)
        self.has_jump = torch.tensor([e.jump is not None for e in self.events], device=device)

    def check(
        self,
        idx: torch.Tensor,
        tau0: torch.Tensor,
        dt: torch.Tensor,
        tau1: torch.Tensor,
        stacked: torch.Tensor,
        f1: torch.Tensor | None,
        accepted: torch.Tensor,
    ) -> Cut | None:
        """Look for events in the rows' accepted steps; return the rows they cut.

        ``idx``: the rows' samples; ``tau0``, ``dt`` and ``tau1``: each step's start, size
        (forward, positive) and end; ``stacked``: the step as :func:`stack_step` gives it
        (``y0``, the stages, ``y1``); ``f1``: ``f(t1, y1)`` for Hermite dense output.
        """
        pos = accepted.nonzero().squeeze(-1)
        if not pos.numel():
            return None
        sample = idx.index_select(0, pos)
        step = _Steps(
            self.solver, self.d, tau0.index_select(0, pos), dt.index_select(0, pos),
            tau1.index_select(0, pos), stacked.index_select(0, pos),
            None if f1 is None else f1.index_select(0, pos),
        )  # fmt: skip
        # The conditions at the events' points of each step (the last its end): a side
        # change between two of them brackets a root, so two crossings in one step (a
        # ball that bounces up and falls back within it) are both seen unless closer.
        n_rows, n_points = pos.numel(), self.points
        thetas = torch.arange(1, n_points + 1, dtype=torch.float64, device=tau0.device) / n_points
        grid = step.tau0[:, None] + thetas * step.dt[:, None]
        grid[:, -1] = step.tau1
        y_grid = step.at_points(thetas)
        values = self.conditions(
            grid.reshape(-1), y_grid.reshape(n_rows * n_points, -1),
            sample.repeat_interleave(n_points),
        ).reshape(n_rows, n_points, -1)  # fmt: skip
        _check_finite(values, "in an accepted step")
        old = self.side.index_select(0, sample)
        before = self.value.index_select(0, sample)
        # Each point's side: its sign, or where it is exactly zero the side before it
        # (the last non-zero point's, else the side at the step start): (A, 1 + P, E).
        signs = torch.cat([old.unsqueeze(1), torch.sign(values)], dim=1)
        point = torch.arange(n_points + 1, device=signs.device).view(1, -1, 1)
        last = torch.where(signs != 0, point, 0).cummax(dim=1).values
        sides = signs.gather(1, last)
        # A change of side into a non-zero side (from 0 only at t0: a condition that
        # starts at zero), in the direction asked for: each one brackets a root between
        # two points (A, P, E).
        new = sides[:, 1:]
        crossed = (new != sides[:, :-1]) & (new != 0)
        crossed = crossed & ((self.col_dir == 0) | (self.col_dir == new))
        hit = crossed.flatten(1).any(dim=1)
        if not bool(hit.any()):
            self.side[sample] = sides[:, -1]
            self.value[sample] = values[:, -1]
            return None
        rows, j, cols = crossed.nonzero(as_tuple=True)
        point_values = torch.cat([before.unsqueeze(1), values], dim=1)
        theta, tau_e = self._roots(
            step, rows, cols, sample.index_select(0, rows),
            (j.to(torch.float64) / n_points, _grid_before(grid, step.tau0, rows, j)),
            ((j + 1).to(torch.float64) / n_points, grid[rows, j]),
            point_values[rows, j, cols], point_values[rows, j + 1, cols], new[rows, j, cols],
        )  # fmt: skip
        cut, last, stop = self._meet(sample, rows, cols, tau_e)
        # Rows no event cut keep their step: their sides and values at its end.
        keep = torch.ones_like(hit)
        keep[cut] = False
        self.side[sample[keep]] = sides[keep, -1]
        self.value[sample[keep]] = values[keep, -1]
        if not cut.numel():
            return None
        # The cut rows' events (``last``: the root that cut each).
        rows_c, cols_c, j_c = rows[last], cols[last], j[last]
        theta_c, tau_c = theta[last], tau_e[last]
        y_e = step.at(rows_c, theta_c)
        sample_c = sample.index_select(0, rows_c)
        event = self.col_event.index_select(0, cols_c)
        y_after = y_e.clone()
        for e in event.unique().tolist():
            if self.events[e].jump is not None:
                which = (event == e).nonzero().squeeze(-1)
                y_after[which] = self.jump(e, tau_c[which], y_e[which], sample_c[which])
        # Sides after the event: at the bracket's start, with the element that fired on its
        # new side, unless the state it continues from says otherwise.
        side = sides[rows_c, j_c].clone()
        side[torch.arange(rows_c.numel(), device=side.device), cols_c] = new[rows_c, j_c, cols_c]
        value = self.conditions(tau_c, y_after, sample_c)
        _check_finite(value, "after an event")
        self.side[sample_c] = torch.where(value != 0, torch.sign(value), side)
        self.value[sample_c] = value
        return Cut(pos.index_select(0, rows_c), tau_c, y_after, stop, self.has_jump[event])

    def _meet(
        self,
        sample: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        tau: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Meet the roots found in the rows' steps in time order.

        Each row meets its roots one after the other (ties: the lower column first),
        counting and logging each, until one with a jump, or one that stops the sample,
        cuts its step there; the roots after it are left to the steps that follow it. An
        event that only records goes by without cutting the step. Returns the rows cut
        (ascending), the position of the root that cut each, and whether it stopped it.
        """
        # Sorted by row, then time, then column: rank within each row.
        order = torch.argsort(cols, stable=True)
        order = order[torch.argsort(tau[order], stable=True)]
        order = order[torch.argsort(rows[order], stable=True)]
        sorted_rows = rows[order]
        start = torch.searchsorted(sorted_rows, sorted_rows, right=False)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device) - start
        n_rows = int(rows.max()) + 1
        cut_at = torch.full((n_rows,), -1, dtype=torch.long, device=rows.device)
        stopped = torch.zeros(n_rows, dtype=torch.bool, device=rows.device)
        for r in range(int(rank.max()) + 1):
            here = ((rank == r) & (cut_at[rows] < 0)).nonzero().squeeze(-1)
            if not here.numel():
                break
            s, event = sample[rows[here]], self.col_event[cols[here]]
            self.count[s, event] += 1
            limit = self.stop_after[event]
            stops = (limit > 0) & (self.count[s, event] >= limit)
            self.log.append((s, self.d * tau[here], event, self.col_element[cols[here]], stops))
            cuts = stops | self.has_jump[event]
            cut_at[rows[here[cuts]]] = here[cuts]
            stopped[rows[here]] = stops
        cut = (cut_at >= 0).nonzero().squeeze(-1)
        return cut, cut_at[cut], stopped[cut]

    def _roots(
        self,
        step: _Steps,
        rows: torch.Tensor,
        cols: torch.Tensor,
        samples: torch.Tensor,
        start: tuple[torch.Tensor, torch.Tensor],
        end: tuple[torch.Tensor, torch.Tensor],
        value0: torch.Tensor,
        value1: torch.Tensor,
        side: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first time in each bracket where column ``cols`` is zero or on ``side``.

        The brackets run from ``start`` to ``end``, each a ``(theta, tau)`` pair: the
        fraction of the step and the forward time, with the condition's values there.
        Returns ``(theta, tau)`` of the roots. A condition exactly zero at a bracket's
        start (where it kept its old side) has its root there.
        """
        tau0, dt = step.tau0[rows], step.dt[rows]
        lo, t_lo = start[0].clone(), start[1].clone()
        hi, t_hi = end[0].clone(), end[1].clone()
        g_lo, g_hi = value0.clone(), value1.clone()
        done = g_lo == 0
        hi, t_hi = torch.where(done, lo, hi), torch.where(done, t_lo, t_hi)
        kept = torch.zeros_like(rows)  # +1: hi kept last time, -1: lo kept (Illinois)
        slow = torch.zeros_like(rows)  # iterations in a row that did not halve the bracket
        inf = torch.tensor(torch.inf, dtype=t_lo.dtype, device=t_lo.device)
        for _ in range(_MAX_ITERATIONS):
            done = done | (t_hi <= torch.nextafter(t_lo, inf))
            todo = (~done).nonzero().squeeze(-1)
            if not todo.numel():
                break
            a, b = lo[todo], hi[todo]
            ga, gb = g_lo[todo], g_hi[todo]
            ta, tb = t_lo[todo], t_hi[todo]
            t_mid = tau0[todo] + (b - gb * (b - a) / (gb - ga)) * dt[todo]
            # Bisect where the secant was slow (the bracket did not halve _SLOW times in
            # a row) or is not finite (a flat secant).
            middle = ta + 0.5 * (tb - ta)
            t_mid = torch.where(torch.isfinite(t_mid) & (slow[todo] < _SLOW), t_mid, middle)
            # At least a few ulps inside the bracket (Brent's nudge): a secant that has
            # converged onto one end then brackets the root at once instead of creeping
            # up on it from that side.
            ulps = 4 * (torch.nextafter(ta, inf) - ta)
            t_mid = torch.minimum(torch.maximum(t_mid, ta + ulps), tb - ulps)
            t_mid = torch.where((t_mid > ta) & (t_mid < tb), t_mid, middle)
            theta = (t_mid - tau0[todo]) / dt[todo]
            y_mid = step.at(rows[todo], theta)
            g = self.conditions(t_mid, y_mid, samples[todo])
            g = g[torch.arange(todo.numel(), device=g.device), cols[todo]]
            _check_finite(g, "inside an accepted step")
            new_side = (g == 0) | (torch.sign(g) == side[todo])
            # Illinois: halve the value at the end kept twice in a row, so the secant
            # does not creep up on the root from one side.
            k = kept[todo]
            ga = torch.where(new_side & (k == -1), 0.5 * ga, ga)
            gb = torch.where(~new_side & (k == 1), 0.5 * gb, gb)
            lo[todo] = torch.where(new_side, a, theta)
            t_lo[todo] = torch.where(new_side, ta, t_mid)
            g_lo[todo] = torch.where(new_side, ga, g)
            hi[todo] = torch.where(new_side, theta, b)
            t_hi[todo] = torch.where(new_side, t_mid, tb)
            g_hi[todo] = torch.where(new_side, g, gb)
            kept[todo] = torch.where(new_side, -1, 1)
            shrunk = t_hi[todo] - t_lo[todo] <= 0.5 * (tb - ta)
            slow[todo] = torch.where(shrunk, 0, slow[todo] + 1)
        return hi, t_hi

    def result(self, device: torch.device) -> EventLog:
        """Every event met, in the order met (per sample: in time order)."""
        if not self.log:
            return EventLog.empty(device)
        sample, t, event, element, stop = (torch.cat(part) for part in zip(*self.log, strict=True))
        return EventLog(sample, t, event, element, stop)


class _Steps:
    """The accepted steps being searched: their clocks and their dense output."""

    def __init__(
        self,
        solver: AbstractSolver,
        d: float,
        tau0: torch.Tensor,
        dt: torch.Tensor,
        tau1: torch.Tensor,
        stacked: torch.Tensor,
        f1: torch.Tensor | None,
    ) -> None:
        self.solver, self.d = solver, d
        self.tau0, self.dt, self.tau1 = tau0, dt, tau1
        self.y0, self.y1 = stacked[:, 0], stacked[:, -1]
        stages = stacked[:, 1:-1]
        if solver.needs_f1:
            assert f1 is not None
            stages = torch.cat([stages, f1.unsqueeze(1)], dim=1)
        self.stages = stages

    def at_points(self, thetas: torch.Tensor) -> torch.Tensor:
        """Every step at the fractions ``thetas`` ``(M,)`` (the last must be 1): ``(A, M, N)``."""
        h = self.d * self.dt
        values = interpolate_stacked(
            self.solver, self.y0.unsqueeze(1), self.stages, h,
            thetas.expand(self.y0.shape[0], -1),
        )  # fmt: skip
        values[:, -1] = self.y1
        return values

    def at(self, rows: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The state of step ``rows[i]`` at fraction ``theta[i]``: ``(P, N)``."""
        y0 = self.y0.index_select(0, rows)
        stages = self.stages.index_select(0, rows)
        h = self.d * self.dt.index_select(0, rows)
        values = interpolate_stacked(
            self.solver, y0.unsqueeze(1), stages, h, theta.unsqueeze(-1)
        ).squeeze(1)
        # The step's own ends, exactly: its start and its end state.
        values = torch.where((theta == 0).unsqueeze(-1), y0, values)
        return torch.where((theta == 1).unsqueeze(-1), self.y1.index_select(0, rows), values)


def _grid_before(
    grid: torch.Tensor, tau0: torch.Tensor, rows: torch.Tensor, j: torch.Tensor
) -> torch.Tensor:
    """The time of the point before point ``j`` of each row's step (its start for 0)."""
    return torch.where(j > 0, grid[rows, (j - 1).clamp(min=0)], tau0[rows])


def _per_row(g: object, n: int, i: int) -> torch.Tensor:
    """A per-sample condition's values as ``(n, E)``."""
    if not isinstance(g, torch.Tensor) or not g.is_floating_point():
        raise TypeError(
            f"event[{i}]'s condition(t, y) must return a floating tensor with one value per "
            f"row ((b,) or (b, E)), got {_describe(g)}"
        )
    if g.ndim == 0 or g.shape[0] != n:
        raise ValueError(
            f"event[{i}]'s condition(t, y) must return one value per row of y in per-sample "
            f"mode, shape ({n},) or ({n}, E), got shape {tuple(g.shape)}"
        )
    return g.reshape(n, -1)


def _check_jump(after: object, before: object, event: int) -> None:
    """A jump must return a state like the one it was given."""
    parts_b = before if isinstance(before, tuple) else (before,)
    parts_a = after if isinstance(after, (tuple, list)) else (after,)
    ok = isinstance(after, torch.Tensor) == isinstance(before, torch.Tensor)
    ok = ok and len(parts_a) == len(parts_b)
    ok = ok and all(
        isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(parts_a, parts_b, strict=False)
    )
    if not ok:
        shapes = [
            (tuple(p.shape), str(p.dtype)) if isinstance(p, torch.Tensor) else type(p).__name__
            for p in parts_a
        ]
        want = [(tuple(p.shape), str(p.dtype)) for p in parts_b]
        raise ValueError(
            f"event[{event}]'s jump(t, y) must return a state like y (shapes and dtypes "
            f"{want}), got {shapes}"
        )


def _check_finite(value: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(value).all()):
        raise ValueError(
            f"an event's condition is not finite {where}: conditions must be finite "
            "wherever the solve goes"
        )


def _describe(x: object) -> str:
    return str(x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
