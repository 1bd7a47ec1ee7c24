"""What a solve returns: the solution, its statistics, its status, and the typed error."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ._events import EventLog
    from .interpolation import DenseInterpolation

State = torch.Tensor | tuple[torch.Tensor, ...]


class Status(enum.Enum):
    """How a solve ended. Each value is the message shown to the user."""

    SUCCESS = "success"
    MAX_STEPS = (
        "the step budget max_steps was used up before the last output time; raise max_steps, "
        "loosen rtol/atol, or use a solver suited to the problem (a stiff problem needs an "
        "implicit solver such as neuralode.Kvaerno5())"
    )
    DT_MIN = (
        "the step size fell below dt_min (or below the floating-point resolution of t): the "
        "solution may blow up in finite time near here, or the problem is stiff (use an "
        "implicit solver such as neuralode.Kvaerno5())"
    )
    NONFINITE = (
        "the vector field returned a non-finite value (NaN or inf) and shrinking the step did "
        "not help"
    )
    NEWTON = (
        "an implicit solver's Newton iteration did not converge and shrinking the step did "
        "not help: f may be discontinuous there, or its Jacobian (by autograd) not finite"
    )

    @property
    def message(self) -> str:
        """The human-readable description of this status."""
        return self.value


class SolverError(RuntimeError):
    """A solve that did not reach its last output time.

    Attributes:
        status: Why it stopped.
        t: Time of the last accepted state (in the caller's time direction).
        dt: Size of the last attempted step.
        steps: Number of steps attempted.
        samples: Indices of the failing samples in a per-sample solve (``None`` otherwise).
    """

    def __init__(
        self,
        status: Status,
        *,
        t: float,
        dt: float,
        steps: int,
        detail: str = "",
        samples: Sequence[int] | None = None,
    ) -> None:
        self.status = status
        self.t = t
        self.dt = dt
        self.steps = steps
        self.samples = None if samples is None else list(samples)
        where = f"at t={t:.6g} with dt={dt:.3g} after {steps} steps"
        if self.samples is not None:
            where += f" (samples {self.samples})"
        text = f"{status.message} ({where})"
        if detail:
            text += f": {detail}"
        super().__init__(text)


@dataclass
class Stats:
    """Work done by a solve.

    Attributes:
        steps: Steps attempted (accepted + rejected).
        accepted: Steps accepted.
        rejected: Steps rejected by error control or because of non-finite values.
        nfe: Vector-field evaluations of the forward solve (initial step selection
            included).
        nfe_backward: Vector-field (or vector-Jacobian) evaluations of the backward pass;
            filled in by gradient methods that solve an ODE backwards.
        rows: Per-sample mode: rows (samples) evaluated by ``f`` in the forward solve,
            summed over evaluations: the work done, since finished samples drop out of
            the batch. ``0`` in joint mode.
        sample_steps: Per-sample mode: steps attempted by each sample, ``(B,)``.
        sample_accepted: Per-sample mode: steps accepted by each sample, ``(B,)``.
        njev: Implicit solvers: Jacobians ``∂f/∂y`` evaluated in the forward solve
            (per-sample mode: batched evaluations, each one Jacobian per sample). With
            ``linear_solver="gmres"`` (matrix-free): Jacobian-vector products instead,
            each batched over the samples and each also one evaluation in ``nfe``.
        nlu: Implicit solvers: LU factorisations of the Newton matrix ``I − hγJ`` (0
            matrix-free).
        nsolve: Implicit solvers: linear solves with those factorisations (matrix-free:
            GMRES solves).

    In per-sample mode ``steps``, ``accepted`` and ``rejected`` are sums over samples and
    ``nfe`` counts batched calls of ``f`` (each on however many samples were left).
    """

    steps: int = 0
    accepted: int = 0
    rejected: int = 0
    nfe: int = 0
    nfe_backward: int = 0
    rows: int = 0
    sample_steps: torch.Tensor | None = None
    sample_accepted: torch.Tensor | None = None
    njev: int = 0
    nlu: int = 0
    nsolve: int = 0


@dataclass
class Solution:
    """The result of :func:`neuralode.solve`.

    Attributes:
        ts: The output times, as given.
        ys: The state at each output time, shape ``(len(ts), *y0.shape)`` (a tuple of such
            tensors for a tuple state). Outputs the solve did not reach are NaN.
        stats: Work counters (:class:`Stats`).
        status: How the solve ended (:class:`Status`).
        t_last: The last time the solve reached with an accepted step (per-sample mode: a
            ``(B,)`` tensor, one per sample).
        y_last: The state at ``t_last`` (the last good state). Where an event stopped a
            sample, the state it stopped in, differentiable (also through the event time).
        dense: A dense interpolant over the whole solve, when ``dense=True`` was asked for.
        sample_status: Per-sample mode: how each sample ended; ``status`` is then
            ``SUCCESS`` only if every sample succeeded, else the first failing sample's.
        regularization: With ``solve(..., regularizers=[...])``: each regulariser's
            integral over the solve (``ts[0]`` to the last output time) by its name, a 0-d
            tensor, or ``(B,)`` (one per sample) in per-sample mode. Differentiable.
        event_ts: With ``solve(..., event=...)``: the times of the events met, in time
            order: ``(K,)``, or ``(B, K)`` per sample (NaN-padded) in per-sample mode.
            Differentiable (implicit-function theorem at each root).
        event_index: Which event each was (its position in the ``event`` tuple), laid
            out like ``event_ts`` (``-1`` padding).
        event_element: Which element of that event's condition crossed zero.
    """

    ts: torch.Tensor
    ys: State
    stats: Stats = field(default_factory=Stats)
    status: Status = Status.SUCCESS
    t_last: float | torch.Tensor = float("nan")
    y_last: State | None = None
    dense: DenseInterpolation | None = None
    sample_status: tuple[Status, ...] | None = None
    regularization: dict[str, torch.Tensor] = field(default_factory=dict)
    event_ts: torch.Tensor | None = None
    event_index: torch.Tensor | None = None
    event_element: torch.Tensor | None = None

    @property
    def failed_samples(self) -> list[int]:
        """Per-sample mode: indices of the samples that did not succeed (else ``[]``)."""
        if self.sample_status is None:
            return []
        return [i for i, s in enumerate(self.sample_status) if s is not Status.SUCCESS]

    @property
    def success(self) -> bool:
        """Whether the solve reached every output time."""
        return self.status is Status.SUCCESS


@dataclass
class RawSolution:
    """The loop's result on the flat state, before unflattening.

    Attributes:
        ys: Outputs, shape ``(len(ts), N)``; NaN rows where the solve did not reach.
        stats: Work counters.
        status: How the loop ended.
        t_last: Last time reached (caller's time).
        y_last: Flat state at ``t_last``.
        dt_last: Last attempted step (caller's sign).
        detail: Extra words for an error message.
        dense: The dense interpolant if asked for.
        sample_status: Per-sample mode: how each sample ended (``t_last`` is then a
            ``(B,)`` tensor and ``ys`` is ``(len(ts), B, N)``).
        events: The events met, when the loop looked for some.
    """

    ys: torch.Tensor
    stats: Stats
    status: Status
    t_last: float | torch.Tensor
    y_last: torch.Tensor
    dt_last: float
    detail: str = ""
    dense: DenseInterpolation | None = None
    sample_status: tuple[Status, ...] | None = None
    events: EventLog | None = None

    def error(self, context: str = "") -> SolverError | None:
        """The :class:`SolverError` of a failed solve (``None`` if it succeeded).

        ``context`` says which solve failed when it is not the caller's own (e.g. an
        adjoint's backward solve).
        """
        if self.status is Status.SUCCESS:
            return None
        detail = f"{context}: {self.detail}" if context and self.detail else context or self.detail
        if self.sample_status is None:
            t, samples = float(self.t_last), None
        else:
            samples = [i for i, s in enumerate(self.sample_status) if s is not Status.SUCCESS]
            t = float(self.t_last[samples[0]])  # type: ignore[index]
        return SolverError(
            self.status, t=t, dt=self.dt_last, steps=self.stats.steps, detail=detail,
            samples=samples,
        )  # fmt: skip
