"""The drivers carry a solver's state from step to step, row by row.

A test solver (Dopri5's step) keeps in its state where its last accepted step started,
its size, and how many attempts in a row were rejected since. Each step checks what it
receives against what it saw itself: an accepted step's state is the next step's, a
rejected step's ``retry_state`` is the retry's, rows keep their own state when finished
samples leave the batch (compaction), and a jump restarts a row from a blank state. The
sample a row belongs to is read from the state itself (a constant last component).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import torch

import neuralode as no
from neuralode.solvers._explicit_rk import FlatField, SolverState, StepResult, StepSize, Time

D = torch.float64
_DOPRI5 = no.Dopri5()


@dataclass(eq=False)
class Watching(no.AbstractSolver):
    """Dopri5 with a state ``(t_prev, dt_prev, rejects)`` per row, checked at every step."""

    order = 5
    error_order = 4
    adaptive = True
    fsal = False
    # Per sample id: the start of its last attempt, and the checks made.
    last_start: dict[int, float] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "retry": 0, "blank": 0})

    def initial_state(self, y0: torch.Tensor) -> SolverState:
        return (torch.zeros(y0.shape[0], 3, dtype=D),)

    def step(
        self,
        f: FlatField,
        t0: Time,
        y0: torch.Tensor,
        f0: torch.Tensor,
        dt: StepSize,
        t1_stage: float | None = None,
        state: SolverState = (),
    ) -> StepResult:
        rows = 1 if isinstance(dt, float) else y0.shape[0]
        (memory,) = state
        assert memory.shape == (rows, 3)
        starts = torch.as_tensor(t0, dtype=D).reshape(-1).expand(rows).tolist()
        sizes = torch.as_tensor(dt, dtype=D).reshape(-1).expand(rows).tolist()
        ids = y0.reshape(rows, -1)[:, -1].round().long().tolist()
        for r, (t_prev, dt_prev, rejects) in enumerate(memory.tolist()):
            if dt_prev == 0.0 and rejects == 0:
                self.checked["blank"] += 1  # a new solve, or restarted after a jump
            elif rejects:
                # A retry: from the same point as the rejected attempt.
                assert starts[r] == self.last_start[ids[r]]
                self.checked["retry"] += 1
            else:
                # After an accepted step: it starts where that one ended.
                assert starts[r] == pytest.approx(t_prev + dt_prev, abs=1e-12)
                self.checked["accepted"] += 1
            self.last_start[ids[r]] = starts[r]
        step = _DOPRI5.step(f, t0, y0, f0, dt, t1_stage)
        t_col = torch.tensor(starts, dtype=D).unsqueeze(-1)
        dt_col = torch.tensor(sizes, dtype=D).unsqueeze(-1)
        accepted = torch.cat([t_col, dt_col, torch.zeros_like(t_col)], dim=-1)
        retry = memory + torch.tensor([0.0, 0.0, 1.0], dtype=D)
        return StepResult(
            y1=step.y1, y_error=step.y_error, f1=step.f1, k=step.k, state=(accepted,),
            retry_state=(retry,),
        )  # fmt: skip

    def stage_weights(self, thetas: Sequence[float]) -> list[list[float]]:
        return _DOPRI5.stage_weights(thetas)

    def stage_polynomials(self) -> list[list[float]]:
        return _DOPRI5.stage_polynomials()

    @property
    def quadrature_weights(self) -> tuple[float, ...]:
        return _DOPRI5.quadrature_weights


def field_with_id(t, y):
    # A fast and a slow oscillator per sample (rates differ by sample), id constant.
    rate = 1.0 + 3.0 * y[..., 2:3]
    dx = torch.cat([rate * y[..., 1:2], -rate * y[..., 0:1]], dim=-1)
    return torch.cat([dx, torch.zeros_like(y[..., 2:3])], dim=-1)


def test_per_sample_rows_keep_their_state_through_rejections_and_compaction():
    ids = torch.arange(6, dtype=D)
    y0 = torch.stack([torch.ones(6, dtype=D), torch.zeros(6, dtype=D), ids], dim=-1)
    # Each sample ends at its own time, so rows leave the batch one by one (compaction).
    ts = torch.stack([torch.linspace(0.0, 0.5 + 0.3 * i, 3, dtype=D) for i in range(6)])
    solver = Watching()
    # A first step far too large makes every sample reject before it accepts.
    controller = no.PIDController(rtol=1e-8, atol=1e-10, dt0=1.0)
    tuning = no.PerSampleTuning(compact_share=0.0)
    sol = no.solve(
        field_with_id, y0, ts, solver=solver, controller=controller, batch_dims=1,
        tuning=tuning,
    )  # fmt: skip
    assert sol.stats.rejected > 0
    assert solver.checked["retry"] >= 6 and solver.checked["accepted"] > 50
    # The state changed nothing else: the numbers are Dopri5's.
    ref = no.solve(field_with_id, y0, ts, solver=no.Dopri5(), controller=controller, batch_dims=1)
    torch.testing.assert_close(sol.ys, ref.ys, rtol=0, atol=0)


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_a_jump_restarts_the_state(batch_dims):
    """A state jump (an event) hands the solver a blank state for that row."""
    y0 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]], dtype=D)
    if batch_dims == 0:
        y0 = y0[:1]

    def restart(t, y):  # back to x = 1, v = 0
        return torch.cat(
            [torch.ones_like(y[..., :1]), torch.zeros_like(y[..., 1:2]), y[..., 2:]], -1
        )

    event = no.Event(lambda t, y: y[..., 0] - 0.5, direction=-1, terminal=False, jump=restart)
    solver = Watching()
    ts = torch.tensor([0.0, 2.0], dtype=D)
    if batch_dims:
        ts = ts.expand(2, 2)
    with torch.no_grad():  # one pass (with autograd a second, segment by segment, follows)
        sol = no.solve(
            field_with_id, y0, ts, solver=solver, batch_dims=batch_dims, event=event,
            controller=no.PIDController(rtol=1e-8, atol=1e-10),
        )  # fmt: skip
    jumps = int(torch.isfinite(sol.event_ts).sum())
    assert jumps >= 1
    rows = y0.shape[0] if batch_dims else 1
    # One blank state per row at the start, and one per jump.
    assert solver.checked["blank"] == rows + jumps
