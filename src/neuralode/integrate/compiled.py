"""Per-sample steps through ``torch.compile``: one step or several fused per graph call.

What the graphs capture is the tensor-only part of a step
(:func:`~neuralode.integrate.rows.attempt`): the vector field, the solver, the
controller's verdict and the rows' update, with no host sync inside. The host driver
(:mod:`neuralode.integrate.per_sample`) reads one summary per call.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from .._vector_field import VectorField
from ..controllers import AbstractController
from ..solvers._explicit_rk import AbstractSolver
from .rows import Attempt, Rows, RowUpdate, stepped
from .rows import attempt as rows_attempt


class Fused(NamedTuple):
    """The tuning's ``fused_steps`` steps in one graph (see :func:`fused`), stacked per step.

    ``update`` and ``live``: the rows' state after the last step; ``tau``, ``n_out``: each
    step's start, ``(K, A)``; ``dt``, ``n_outputs``, ``stacked``: as
    :class:`~neuralode.integrate.rows.Attempt`'s, ``(K, A)``, ``(K, A)``,
    ``(K, A, s + 2, N)``; ``summary``: each step's
    ``[outputs, leaving, accepted, trouble, live at the start]`` row counts, ``(K, 5)``.
    """

    update: RowUpdate
    live: torch.Tensor
    tau: torch.Tensor
    n_out: torch.Tensor
    dt: torch.Tensor
    n_outputs: torch.Tensor
    stacked: torch.Tensor
    summary: torch.Tensor


def fused(
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
    max_steps: int,
    direction: float,
    n_steps: int,
) -> Fused:
    """``n_steps`` of :func:`~neuralode.integrate.rows.attempt` in a row, no host in between.

    A row that leaves at one step is frozen (``live`` False) for the next ones, exactly
    as the host freezes it between single steps: it keeps its clock, state and counts.
    What the host does between single steps that these steps cannot do, a failure's
    verdict, is not done here: a step with ``trouble`` rows makes the host discard the
    whole result and take those steps one at a time (the per-sample driver's
    ``advance_fused``).
    """
    parts: list[list[torch.Tensor]] = [[], [], [], [], [], []]
    live = rows.live
    for _ in range(n_steps):
        attempt = rows_attempt(f, solver, controller, rows, max_steps, direction)
        n_live = live.sum().unsqueeze(0)
        summary = torch.cat([attempt.summary, n_live])
        for part, x in zip(parts, (rows.tau, rows.n_out, attempt.dt, attempt.n_outputs,
                                   attempt.stacked, summary), strict=True):  # fmt: skip
            part.append(x)
        live = live ^ attempt.leaving
        rows = stepped(rows, attempt.update, live, 0)
    tau, n_out, dt, n_outputs, stacked, summary = (torch.stack(p) for p in parts)
    update = RowUpdate(
        tau=rows.tau, dt=rows.dt, y=rows.y, f0=rows.f0, n_out=rows.n_out, streak=rows.streak,
        steps=rows.steps, accepted=rows.accepted, cstate=rows.cstate, sstate=rows.sstate,
    )  # fmt: skip
    return Fused(update, live, tau, n_out, dt, n_outputs, stacked, summary)


@functools.cache
def _compiled_graphs(backend: str) -> dict[str, tuple[Any, Any]]:
    # Compiled once per process: dynamo keys its cache on the function's code and guards
    # on the vector field, solver and controller, so a training loop that keeps calling
    # the same model reuses the graph. The batch dimension is dynamic from the start, as
    # compaction shrinks it every few steps; a batch of one sample is its own graph
    # (dynamo specialises sizes 0 and 1).
    #   Python numbers (the tableau's weights, the controller's coefficients, max_steps,
    # the vector field's float constants) are constants of the graph: dynamic=True would
    # otherwise lift each to an input (about 45 0-d tensors for dopri5), wrapped and
    # checked at every call. Changing one recompiles; tolerances are inputs (see per_sample).
    #   Returns each compiled function (one step, and several fused steps) bare and inside
    # that config patch. The patch matters only when dynamo traces, but entering it costs
    # ~20 µs a call (~5% of a small step), so only the calls that may trace go through it
    # (see call_compiled). A call that traces without it anyway still gets a correct
    # graph, with the numbers as inputs.
    patch = torch._dynamo.config.patch(specialize_float=True, specialize_int=True)
    graphs = {}
    for name, fn in (("single", rows_attempt), ("fused", fused)):
        compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=backend)
        graphs[name] = (compiled, patch(compiled))
    return graphs


def call_compiled(
    name: str,
    first: bool,
    backend: str,
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
    *rest: Any,
) -> Any:
    """Call compiled graph ``name`` (``first`` call of it in this solve?) on the arguments.

    ``backend`` is the ``torch.compile`` backend (:class:`~neuralode._problem.PerSampleTuning`).

    Dynamo traces at a solve's first call (a new field, solver, controller, dtype or grad
    mode fails its guards) and when one row is left (it specialises size 1); the other
    calls reuse those graphs, so they skip the config patch. The graph calls an uncounted
    view of ``f``: the callers count its calls from what the graph returns.
    """
    bare, patched = _compiled_graphs(backend)[name]
    call = patched if first or rows.y.shape[0] < 2 else bare
    return call(f.uncounted(), solver, controller, rows, *rest)


def compiled_attempt(
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
    max_steps: int,
    direction: float,
    first: bool,
    backend: str,
) -> Attempt:
    """:func:`~neuralode.integrate.rows.attempt` through its compiled graph, counted."""
    attempt: Attempt = call_compiled(
        "single", first, backend, f, solver, controller, rows, max_steps, direction
    )
    # Every stage after k[0] = f0 is one call of f (stacked: y0, the stages, y1).
    evaluations = attempt.stacked.shape[1] - 3
    f.nfe += evaluations
    f.rows += evaluations * rows.y.shape[0]
    return attempt
