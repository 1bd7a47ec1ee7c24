"""``solve(..., event=...)``: find the events, then solve differentiably between them.

The first pass is the step loop with a :class:`~neuralode.integrate.events.Watcher`,
without a graph: it finds every sample's events (times, which condition), applies the
jumps and stops, and gives the outputs. Under ``torch.no_grad()`` that is the answer.

With autograd on, a second pass solves segment by segment between the events the first
pass found, with the caller's gradient method, so every gradient method works
unchanged: segment ``k`` of each sample runs from its ``(k-1)``-th event (or ``t0``)
to its ``k``-th (or its last output time), and between segments the event time and the
jump are autograd operations. The event time gets its derivative from the implicit
function theorem at the root, ``dt*/dθ = −(∂g/∂θ + ∂g/∂y · dy/dθ) / (∂g/∂t + ∂g/∂y · f)``:
``t* + (g.detach() − g) / D`` has value ``t*`` and that derivative, and the state at the
event, ``y(t*) + f · (t* − t*.detach())``, the derivative a moving end time gives. A
segment starting at a differentiable time gets its ``t0`` gradient from the solve itself.
The values are the second pass's (the first pass's to within the tolerances).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._events import Event, EventTable
from ._problem import Problem
from ._solution import RawSolution, Solution, State, Status
from ._vector_field import UserField
from .integrate.events import as_rows, as_state, call_on_rows


class _Rows:
    """Both modes as rows of samples (the joint problem is one row), for the user's functions."""

    def __init__(self, problem: Problem, f: UserField) -> None:
        self.problem, self.f = problem, f
        self.batched = problem.batched

    def user(self, y: torch.Tensor) -> State:
        """Rows ``(n, N)`` in the caller's structure."""
        return as_state(self.problem, y)

    def flat(self, state: Any) -> torch.Tensor:
        """The caller's state as rows."""
        return as_rows(self.problem, state)

    def call(
        self, fn: Callable[..., Any], t: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> Any:
        """``fn(t, y, *args)`` on rows (joint: ``fn(t, y)`` on the one row)."""
        return call_on_rows(self.problem, fn, t, y, idx)

    def condition(
        self, events: tuple[Event, ...], which: torch.Tensor, element: torch.Tensor,
        t: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Each row's condition element that fired, ``(n,)``."""
        out = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for e in which.unique().tolist():
            rows = (which == e).nonzero().squeeze(-1)
            g = self.call(events[e].condition, t[rows], y[rows], idx[rows])
            g = g.reshape(rows.numel(), -1)
            picked = g.gather(1, element[rows].unsqueeze(-1)).squeeze(-1)
            out = out.index_put((rows,), picked.to(y.dtype))
        return out

    def field(self, t: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``f`` on rows, ``(n, N)``."""
        return self.flat(self.call(self.f, t, y, idx))


def replay(
    solve_segment: Callable[[State, torch.Tensor, tuple[torch.Tensor, ...]], Solution],
    problem: Problem,
    f: UserField,
    ts: torch.Tensor,
    y0: State,
    events: tuple[Event, ...],
    table: EventTable,
    first: RawSolution,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The differentiable second pass.

    Returns the outputs ``(T, B, N)`` (joint: ``B = 1``), the event times ``(B, K)`` in
    ``ts``'s dtype, the state each sample continues from after its last event ``(B, N)``
    (where an event stopped it, its last state), and the evaluations of ``f``. Samples
    the first pass did not finish keep its (constant) values.
    """
    rows = _Rows(problem, f)
    d = problem.direction
    y = rows.flat(y0)
    batch = y.shape[0]
    ts_rows = ts.expand(batch, -1) if ts.ndim == 2 or rows.batched else ts.unsqueeze(0)
    taus = d * ts_rows.detach().to(torch.float64)
    n_times = taus.shape[1]
    ys = first.ys.detach().reshape(n_times, batch, -1)
    event_ts = table.times.to(ts.dtype)
    statuses = first.sample_status or (first.status,)
    ok = torch.tensor([s is Status.SUCCESS for s in statuses], device=y.device)
    start_t = ts_rows[:, 0]
    start = taus[:, 0].clone()
    nfe, placed, event_placed = 0, [], []
    for k in range(table.times.shape[1] + 1):
        at_event = table.count > k
        final = (table.count == k) & ~table.stopped
        idx = (ok & (at_event | final)).nonzero().squeeze(-1)
        if not idx.numel():
            break
        ending = at_event[idx]
        end = taus[idx, -1]
        if k < table.times.shape[1]:
            end = torch.where(ending, d * table.times[idx, k], end)
        y_end, outs, n = _segment(solve_segment, rows, y, start_t, start, end, taus, ts_rows, idx)
        nfe += n
        placed.extend(outs)
        if not bool(ending.any()):
            break
        e_rows = ending.nonzero().squeeze(-1)
        e_idx = idx[e_rows]
        t_e = (d * end[e_rows]).to(ts.dtype)
        which, element = table.event[e_idx, k], table.element[e_idx, k]
        t_ev, y_next = _event(rows, events, which, element, t_e, y_end[e_rows], e_idx)
        nfe += 1
        event_placed.append((e_idx, k, t_ev))
        y = y.index_put((e_idx,), y_next)
        start_t = start_t.index_put((e_idx,), t_ev)
        start = start.index_put((e_idx,), end[e_rows])
    for j, b, value in placed:
        ys = ys.index_put((j, b), value)
    for b, k, t_ev in event_placed:
        event_ts = event_ts.index_put((b, torch.full_like(b, k)), t_ev)
    return ys, event_ts, y, nfe


def _segment(
    solve_segment: Callable[[State, torch.Tensor, tuple[torch.Tensor, ...]], Solution],
    rows: _Rows,
    y: torch.Tensor,
    start_t: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    taus: torch.Tensor,
    ts_rows: torch.Tensor,
    idx: torch.Tensor,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], int]:
    """Solve the samples ``idx`` from their ``start`` to their ``end`` (forward time).

    Every output time in ``(start, end]`` is an output of the segment; the rows are padded
    to one length with times placed evenly inside each row's widest gap (outputs there
    cost an interpolation and change no step). Returns the state at each row's end, the
    outputs to place as ``(output index, sample, value)`` and the evaluations of ``f``.
    """
    d = rows.problem.direction
    s, e = start[idx], end
    y_rows = y.index_select(0, idx)
    moving = e > s
    y_end = y_rows.clone()
    placed: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    if not bool(moving.any()):
        return y_end, placed, 0
    m_rows = moving.nonzero().squeeze(-1)
    sub = idx[m_rows]
    inner = (taus[sub] > s[m_rows, None]) & (taus[sub] <= e[m_rows, None])
    layouts, length = [], 0
    for r in range(sub.numel()):
        js = inner[r].nonzero().squeeze(-1).tolist()
        points = [float(s[m_rows[r]])] + [float(taus[sub[r], j]) for j in js]
        end_is_output = bool(js) and points[-1] == float(e[m_rows[r]])
        if not end_is_output:
            points.append(float(e[m_rows[r]]))
        layouts.append((js, points, end_is_output))
        length = max(length, len(points))
    grid, source_rows, source_cols, source_j = [], [], [], []
    end_col = []
    for r, (js, points, _) in enumerate(layouts):
        full, cols = _pad(points, length)
        grid.append(full)
        source_rows += [r] * len(js)
        source_cols += cols[1 : 1 + len(js)]
        source_j += js
        end_col.append(cols[len(points) - 1])
    device = y.device
    seg_ts = (d * torch.tensor(grid, dtype=torch.float64, device=device)).to(ts_rows.dtype)
    # The differentiable times: each row's start and the caller's output times.
    r_all = torch.arange(sub.numel(), device=device)
    seg_ts = seg_ts.index_put((r_all, torch.zeros_like(r_all)), start_t[sub])
    if source_j:
        rr, cc, jj = (
            torch.tensor(v, dtype=torch.long, device=device)
            for v in (source_rows, source_cols, source_j)
        )
        seg_ts = seg_ts.index_put((rr, cc), ts_rows[sub[rr], jj])
    if not rows.batched:
        seg_ts = seg_ts[0]
    args = tuple(a.index_select(0, sub) for a in rows.problem.f.args)
    sol = solve_segment(rows.user(y_rows[m_rows]), seg_ts, args)
    out = _as_rows(sol.ys, length, sub.numel())
    ends = torch.tensor(end_col, dtype=torch.long, device=device)
    y_end = y_end.index_put((m_rows,), out[ends, r_all])
    if source_j:
        placed.append((jj, sub[rr], out[cc, rr]))
    return y_end, placed, sol.stats.nfe


def _as_rows(ys: State, length: int, n: int) -> torch.Tensor:
    """A solution's outputs (a tensor or a tuple of them) as ``(T, n, N)``."""
    parts = (ys,) if isinstance(ys, torch.Tensor) else ys
    return torch.cat([p.reshape(length, n, -1) for p in parts], dim=-1)


def _pad(points: list[float], length: int) -> tuple[list[float], list[int]]:
    """``points`` (increasing) padded to ``length`` inside their widest gap.

    Returns the padded list and the column of each original point.
    """
    extra = length - len(points)
    if not extra:
        return points, list(range(len(points)))
    gaps = [b - a for a, b in zip(points, points[1:], strict=False)]
    g = max(range(len(gaps)), key=gaps.__getitem__)
    a, b = points[g], points[g + 1]
    fill = [a + (b - a) * (i + 1) / (extra + 1) for i in range(extra)]
    if not all(x < y for x, y in zip([a, *fill], [*fill, b], strict=True)):
        raise ValueError(
            "two events (or an event and an output time) are too close together to solve "
            f"between them differentiably (within {b - a:.3g} of each other near t={a:.6g}); "
            "use float64 times"
        )
    cols = list(range(g + 1)) + [c + extra for c in range(g + 1, len(points))]
    return points[: g + 1] + fill + points[g + 1 :], cols


def _event(
    rows: _Rows,
    events: tuple[Event, ...],
    which: torch.Tensor,
    element: torch.Tensor,
    t_e: torch.Tensor,
    y_e: torch.Tensor,
    idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The event times with their implicit-function derivative, and the states after them."""
    with torch.enable_grad():
        t_var = t_e.detach().requires_grad_(True)
        y_var = y_e.detach().requires_grad_(True)
        g = rows.condition(events, which, element, t_var, y_var, idx)
        f_var = rows.field(t_var.detach(), y_var.detach(), idx)
        dg_dt = dg_dy = None
        if g.requires_grad:  # (a condition may not depend on t or y at all)
            dg_dt, dg_dy = torch.autograd.grad(g.sum(), (t_var, y_var), allow_unused=True)
    rate = (dg_dy * f_var).sum(-1) if dg_dy is not None else torch.zeros_like(g)
    if dg_dt is not None:
        rate = rate + dg_dt.to(rate.dtype)
    tiny = torch.finfo(rate.dtype).tiny
    # A grazing root (the condition's total derivative zero there) has no finite
    # derivative; keep it finite rather than divide by zero.
    rate = torch.where(rate.abs() > tiny, rate, torch.full_like(rate, tiny)).detach()
    g = rows.condition(events, which, element, t_e, y_e, idx)
    t_ev = t_e + ((g.detach() - g) / rate).to(t_e.dtype)
    f_e = rows.field(t_e, y_e, idx)
    y_ev = y_e + f_e * (t_ev - t_e.detach()).to(y_e.dtype).unsqueeze(-1)
    y_next = y_ev
    for e in which.unique().tolist():
        jump = events[e].jump
        if jump is None:
            continue
        r = (which == e).nonzero().squeeze(-1)
        jumped = rows.flat(rows.call(jump, t_ev[r], y_ev[r], idx[r]))
        y_next = y_next.index_put((r,), jumped)
    return t_ev, y_next
