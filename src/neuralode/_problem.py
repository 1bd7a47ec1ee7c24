"""A validated initial-value problem on the flat state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._checks import check_args, check_batch, check_sample_times, check_state, check_times
from ._solution import State
from ._time_gradients import attach_initial_time
from ._vector_field import Structure, UserField, VectorField, private_copy


@dataclass(frozen=True)
class PerSampleTuning:
    """How the per-sample driver runs: its performance knobs, in one place.

    None of them changes a number of the solution (the tests prove it for each); they
    trade host overhead against wasted rows.

    Attributes:
        compile: Run each step's tensor work through ``torch.compile``
            (``solve(compile_step=True)``).
        backend: ``torch.compile`` backend; ``"eager"`` traces with dynamo but generates
            no code (a check for graph breaks in seconds).
        fused_steps: A compiled solve takes this many steps per call of the compiled
            graph. Each call costs some 200 µs of dynamo, guard and allocation overhead on
            the host, whatever the batch, which on small states is most of a step's time;
            unrolling the steps in one graph pays it once for all of them. 1 turns fusion
            off.
        sync_every: An eager (uncompiled) solve takes this many steps between host reads
            of the loop's state (which rows left, how many outputs fell in the steps).
            On a GPU each read waits for the device to finish every kernel queued so
            far, so the host cannot queue the next step while the device runs this one;
            with ``sync_every=K`` it queues K steps' kernels, then reads once. The steps
            are the same ones (rows that finish inside the K steps stay in the batch,
            frozen, until the read), so no number changes. On a CPU there is no device to
            wait for and a read costs nothing: the default 1 reads after every step.
        compact: Drop finished samples from the batch (the point of the mode). Off, they
            stay frozen in place: only to prove that compaction changes no number.
        compact_share: Finished samples stay in the batch, frozen, until they are this
            share of it: compacting costs an ``index_select`` per per-sample tensor, and
            with samples finishing a few at a time compacting at every step is a visible
            share of a small problem's wall time. The frozen rows are then at most this
            share of the rows evaluated.
        pending_elements: Steps whose outputs are pending are interpolated once their
            stacks hold this many elements (and at the end): 32 MiB in float64 by default,
            whatever the problem's size.
    """

    compile: bool = False
    backend: str = "inductor"
    fused_steps: int = 4
    sync_every: int = 1
    compact: bool = True
    compact_share: float = 0.1
    pending_elements: int = 1 << 22

    @property
    def joint_as_row(self) -> bool:
        """Whether a joint solve with this tuning runs as the per-sample driver's one row.

        The joint driver's clock is Python floats, read every step; compiled steps and
        steps without a host read each need the clock as tensors.
        """
        return self.compile or self.sync_every > 1

    def __post_init__(self) -> None:
        for name in ("fused_steps", "sync_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not 0 <= self.compact_share < 1:
            raise ValueError(f"compact_share must lie in [0, 1), got {self.compact_share!r}")
        if isinstance(self.pending_elements, bool) or not (
            isinstance(self.pending_elements, int) and self.pending_elements >= 1
        ):
            raise ValueError(
                f"pending_elements must be a whole number >= 1, got {self.pending_elements!r}"
            )


# The default, built once: a solve without tuning= need not build and validate one.
DEFAULT_TUNING = PerSampleTuning()


@dataclass(frozen=True)
class Problem:
    """Everything the step loop needs, in its own terms.

    The loop runs in forward time ``tau = direction * t``, so reverse-time solves share
    every code path with forward ones; solvers are called with the signed time and step.

    Attributes:
        f: The vector field on the flat state.
        y0: Initial state as the solver's tensor (``y0`` itself, or the concatenated
            tuple).
        f0: ``f(t0, y0)`` from the boundary check (already counted in ``f.nfe``).
        ts: The output times as given.
        taus: Output times in forward time, as Python floats (increasing).
        direction: ``+1.0`` for increasing ``ts``, ``-1.0`` for decreasing.
        structure: How to flatten and restore the state.
        params: Tensors to differentiate ``f`` with respect to, as given to ``solve``
            (``None``: the parameters of ``f`` if it is an ``nn.Module``).
        sample_taus: Per-sample mode only: ``(B, T)`` float64 output times of each sample
            in forward time (``taus`` is then empty). ``None`` in joint mode.
        tuning: Per-sample mode only: how the driver runs (:class:`PerSampleTuning`).
    """

    f: VectorField
    y0: torch.Tensor
    f0: torch.Tensor
    ts: torch.Tensor
    taus: tuple[float, ...]
    direction: float
    structure: Structure
    params: tuple[torch.Tensor, ...] | None = None
    sample_taus: torch.Tensor | None = None
    tuning: PerSampleTuning = DEFAULT_TUNING

    @property
    def batched(self) -> bool:
        """Whether this is a per-sample problem (the leading dim holds independent samples)."""
        return self.sample_taus is not None


def make_problem(
    f: UserField,
    y0: State,
    ts: torch.Tensor,
    params: Sequence[torch.Tensor] | None = None,
    *,
    batch_dims: int = 0,
    args: torch.Tensor | Sequence[torch.Tensor] = (),
    tuning: PerSampleTuning | None = None,
) -> Problem:
    """Validate the inputs at the boundary and build the flat :class:`Problem`.

    One builder for both modes: ``batch_dims=1`` makes the leading dim of ``y0`` a batch
    of independent problems with ``(T,)`` or ``(B, T)`` output times and per-sample
    ``args``; joint problems take 1-D times only.
    """
    if not callable(f):
        raise TypeError(f"f must be callable as f(t, y), got {type(f).__name__}")
    batched = batch_dims == 1
    sample_taus: torch.Tensor | None = None
    if batched:
        parts = check_state(y0, complex_ok=False)
        batch = check_batch(parts, y0)
        sample_taus, direction = check_sample_times(ts, batch)
        args = check_args(args, batch)
    else:
        values = check_times(ts)
        parts = check_state(y0)
        direction = 1.0 if len(values) == 1 or values[-1] > values[0] else -1.0
    structure = Structure.of(y0, batched=batched)
    field = VectorField(f, structure, ts.dtype, parts[0].device, tuple(args))
    # Every use of y0 downstream, f0 included, must go through the t0-gradient hook.
    y0_flat = attach_initial_time(field, ts, private_copy(structure, y0))
    if sample_taus is not None:
        f0 = field.first((direction * sample_taus[:, 0]).to(ts.dtype), y0_flat, y0)
    else:
        f0 = field.first(field.time(values[0]), y0_flat, y0)
    return Problem(
        f=field,
        y0=y0_flat,
        f0=f0,
        ts=ts,
        taus=() if batched else tuple(direction * t for t in values),
        direction=direction,
        structure=structure,
        params=None if params is None else tuple(params),
        sample_taus=sample_taus,
        tuning=DEFAULT_TUNING if tuning is None else tuning,
    )


def flat_tolerance(value: object, problem: Problem) -> torch.Tensor | float:
    """A tolerance as a float, or as a tensor laid out like the solver's state.

    Per-component tolerances give one tensor per state part, broadcast to that part's shape
    (with the sample dimension in front in per-sample mode, so a ``(B, 1)`` tensor gives
    each sample its own tolerance), then flattened exactly as the state is.
    """
    if isinstance(value, (int, float)):
        return float(value)
    parts = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    structure = problem.structure
    if len(parts) != len(structure.shapes):
        raise ValueError(
            f"a per-component tolerance needs one tensor per state part "
            f"({len(structure.shapes)}), got {len(parts)}"
        )
    lead = (problem.y0.shape[0],) if structure.batched else ()
    full = tuple(
        _broadcast_tolerance(p, torch.Size((*lead, *s)))
        for p, s in zip(parts, structure.shapes, strict=True)
    )
    # Real even for a complex state: the scale atol + rtol·|y| is real (y.real: y if real).
    y0 = problem.y0
    return structure.flatten(full if structure.is_tuple else full[0]).to(y0.device, y0.real.dtype)


def _broadcast_tolerance(part: object, shape: torch.Size) -> torch.Tensor:
    value = part if isinstance(part, torch.Tensor) else torch.tensor(float(part))  # type: ignore[arg-type]
    try:
        return torch.broadcast_to(value, shape)
    except RuntimeError as err:
        raise ValueError(
            f"a tolerance tensor of shape {tuple(value.shape)} does not broadcast to the "
            f"state shape {tuple(shape)}; give a float or a tensor of the state's shape"
        ) from err
