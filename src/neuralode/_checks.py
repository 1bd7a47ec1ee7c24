"""Boundary checks on the inputs of a solve, and the per-call checks on the vector field."""

from __future__ import annotations

import cmath
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch._C._functorch import is_batchedtensor

from ._norms import rows_norm

State = torch.Tensor | tuple[torch.Tensor, ...]

_VMAP = (
    "torch.func.vmap over solve is not supported: the step loop makes data-dependent "
    "decisions (accept/reject, step size) that vmap cannot batch. For a batch of "
    "independent problems, stack them along a leading dim and use solve(..., batch_dims=1) "
    "(per-sample mode: each sample gets its own steps); for Jacobians use torch.func.jacrev "
    "or torch.autograd.functional.jacobian, which work"
)


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element of ``x`` is finite: one reduction and one host read.

    NaN and inf propagate through a sum, so a finite sum means finite elements; only a sum
    that is not finite (a non-finite element, or finite ones overflowing the dtype) is
    checked element by element. ``isfinite(x).all()`` alone is five passes over ``x``.
    """
    # (detach() rather than a no_grad block: a third of this check's time.)
    x = x.detach()
    if cmath.isfinite(x.sum().item()):
        return True
    return bool(torch.isfinite(x).all())


def check_tensor_input(x: torch.Tensor, name: str) -> None:
    """Refuse tensors a solve cannot compute with: meta tensors and ``vmap``'s batched ones."""
    if x.is_meta:
        raise TypeError(
            f"{name} is a meta tensor (shape {tuple(x.shape)}, no data): a solve needs real "
            "values to choose its steps; create it on a real device (e.g. device='cpu'), or "
            "materialise the module with module.to_empty(device=...) and initialise it"
        )
    if is_batchedtensor(x):
        raise TypeError(f"{name}: {_VMAP}")


def check_state(y0: object, *, complex_ok: bool = True) -> tuple[torch.Tensor, ...]:
    """The parts of ``y0`` (a tensor or tuple), checked: float or complex, finite, one dtype/device.

    Complex states are solved as they are (error norms on ``|·|``, time stays real);
    ``complex_ok=False`` (the per-sample mode) refuses them with the workaround.
    """
    parts = (y0,) if isinstance(y0, torch.Tensor) else y0
    if not isinstance(parts, tuple) or not parts:
        raise TypeError(
            f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}"
        )
    for i, part in enumerate(parts):
        name = "y0" if isinstance(y0, torch.Tensor) else f"y0[{i}]"
        if not isinstance(part, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(part).__name__}")
        check_tensor_input(part, name)
        if part.is_complex() and not complex_ok:
            raise TypeError(
                f"{name} is complex ({part.dtype}), which batch_dims=1 does not support yet: "
                "solve it with batch_dims=0, or split it into real and imaginary parts with "
                "torch.view_as_real(y0) (and the same for f's output)"
            )
        if not (part.is_floating_point() or part.is_complex()):
            raise TypeError(
                f"{name} must be floating point (or complex), got dtype {part.dtype}; "
                "convert with .float() or .double()"
            )
        if not all_finite(part):
            bad = torch.nonzero(~torch.isfinite(part))[:5].tolist()
            raise ValueError(f"{name} contains NaN or inf (at indices {bad}); fix the input")
        if part.dtype != parts[0].dtype or part.device != parts[0].device:
            raise TypeError(
                f"all parts of y0 must share a dtype and device: y0[0] is {parts[0].dtype} on "
                f"{parts[0].device}, {name} is {part.dtype} on {part.device}"
            )
    if not any(part.numel() for part in parts):
        shapes = [tuple(part.shape) for part in parts]
        raise ValueError(
            f"y0 is empty (shape {shapes[0] if len(shapes) == 1 else shapes}): there is nothing "
            "to solve; skip the call when the batch is empty"
        )
    return parts


def _where(t: Any) -> str:
    """`` at t=...`` for an error message (``t`` a float, a 0-d or a per-row tensor)."""
    if t is None:
        return ""
    if isinstance(t, torch.Tensor):
        if t.is_meta or is_batchedtensor(t):
            return ""
        values = t.detach().reshape(-1).tolist()
        shown = f"{values[0]:.6g}" if len(values) == 1 else f"{[round(v, 6) for v in values[:4]]}"
        return f" (at t={shown}{'...' if len(values) > 4 else ''})"
    return f" (at t={t:.6g})"


def check_field_output(out: object, y: State, t: Any = None) -> None:
    """Check that ``f(t, y)`` returned ``y``'s structure, shapes and dtypes (device too).

    The full check, run on the first evaluation at ``t0``; every later evaluation runs
    :func:`check_call`, which comes here only when something is wrong.
    """
    if isinstance(y, torch.Tensor):
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"f(t, y) must return a tensor like y0, got {type(out).__name__}{_where(t)}"
            )
        pairs = [("f(t, y)", out, y)]
    else:
        if not isinstance(out, (tuple, list)) or len(out) != len(y):
            raise TypeError(
                f"f(t, y) must return a tuple of {len(y)} tensors like y0, "
                f"got {type(out).__name__}{_where(t)}"
            )
        pairs = [(f"f(t, y)[{i}]", o, p) for i, (o, p) in enumerate(zip(out, y, strict=True))]
    for name, got, want in pairs:
        if not isinstance(got, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(got).__name__}{_where(t)}")
        if is_batchedtensor(got):
            raise TypeError(f"f(t, y) returned a vmap-batched tensor: {_VMAP}")
        if got.shape != want.shape:
            raise ValueError(
                f"{name} returned shape {tuple(got.shape)} but the state has shape "
                f"{tuple(want.shape)}{_where(t)}; the vector field must return dy/dt with y's "
                "shape (no broadcasting)"
            )
        if got.dtype != want.dtype:
            raise TypeError(
                f"{name} returned dtype {got.dtype} but the state is {want.dtype}{_where(t)}; cast "
                "the output (or y0) so both match"
            )
        if got.device != want.device:
            raise TypeError(
                f"{name} returned a tensor on {got.device} but the state is on "
                f"{want.device}{_where(t)}; create the output on y.device"
            )


def check_call(out: object, y: State, t: Any) -> None:
    """The cheap check of every evaluation: structure, shape and dtype metadata, no sync.

    A wrong dtype at ``t > t0`` would silently promote the whole solution (float32 state,
    float64 output), and a wrong but broadcastable shape would fail deep inside the
    interpolation: both are the user's field, so say so at the call that did it.
    """
    if isinstance(y, torch.Tensor):
        if isinstance(out, torch.Tensor) and out.shape == y.shape and out.dtype == y.dtype:
            return
    elif isinstance(out, (tuple, list)) and len(out) == len(y):
        ok = True
        for o, p in zip(out, y, strict=True):
            if not (isinstance(o, torch.Tensor) and o.shape == p.shape and o.dtype == p.dtype):
                ok = False
                break
        if ok:
            return
    check_field_output(out, y, t)


def in_place_error(t: Any) -> ValueError:
    """The error for a vector field that wrote into the ``y`` it was given."""
    return ValueError(
        "the vector field modified its input y in place"
        f"{_where(t)} (e.g. y *= 2, y.add_(...), y[0] = ..., or an in-place activation on y): "
        "the solver reuses y, so the solution would be silently wrong. Compute a new tensor "
        "instead (y = y * 2, torch.relu(y) rather than torch.relu_(y) / nn.ReLU(inplace=True)), "
        "or work on y.clone()"
    )


def check_whole_number(value: object, name: str) -> int:
    """A positive whole number (``3`` or ``3.0``); refuse ``2.7``, ``True`` and non-numbers.

    Integral floats are accepted because budgets are often written ``1e4`` or read from a
    JSON config; truncating ``2.7`` to ``2`` would silently change the budget, so it is an
    error (one rule for ``solve(max_steps=)`` and ``compat``'s ``max_num_steps``).
    """
    number: int | None = None
    if not isinstance(value, bool):
        try:
            number = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                number = int(value)
    if number is None or number < 1:
        raise ValueError(
            f"{name} must be a positive integer, got {value!r}; e.g. {name}=10000 "
            "(a step budget is a whole number: 1e4 is fine, 2.7 is not)"
        )
    return number


def _lowest(value: Any) -> float:
    """The smallest value of a float or per-component tolerance (one sync for tensors)."""
    if isinstance(value, (tuple, list)):
        return min(_lowest(v) for v in value)
    if isinstance(value, torch.Tensor):
        return float(value.detach().min()) if value.numel() else math.inf
    return float(value)


def check_tolerances_for(dtype: torch.dtype, rtol: Any, atol: Any) -> None:
    """Refuse tolerances the state's floating-point type cannot represent.

    Error control divides by ``scale = atol + rtol·|y|`` in the state's dtype. When
    ``atol`` is below the dtype's smallest normal number it rounds to zero (float16:
    1e-8 does) and ``y / scale`` overflows wherever ``y`` is small, and when ``1/rtol``
    exceeds the largest finite number (float16: 65504) ``|y| / scale`` overflows for
    every ``y``: either way the solve reports a non-finite value that is not the field's.
    And the error estimate carries rounding noise of size ``eps·dt·|f|``, so accepted
    steps shrink to ``dt ≲ (rtol/eps)·|y/f|``: below ``rtol = eps²`` that is below ``eps``
    of the solution's time scale and ``y + dt·f`` rounds back to ``y`` (the solution
    stagnates while every step "succeeds"); below ``1e-6·eps`` it takes millions of steps
    per time scale (float64, y' = -y over [0, 0.25]: 7,276 steps at rtol = atol = 1e-22,
    over 200,000 at 1e-24), which with a large step budget (compat's) never ends.
    """
    info = torch.finfo(dtype)
    low_atol, low_rtol = _lowest(atol), _lowest(rtol)
    floor = max(1.0 / info.max, info.eps**2, 1e-6 * info.eps)
    if low_atol >= info.tiny and low_rtol >= floor:
        return
    name = str(dtype).removeprefix("torch.")
    fix = (
        f"loosen the tolerances to what {name} resolves (eps={info.eps:.3g}; e.g. rtol=1e-3, "
        "atol=1e-4 for float16) or solve in a wider dtype (y0.float() or y0.double(), f too)"
    )
    if low_atol < info.tiny:
        raise ValueError(
            f"atol={low_atol:.3g} is below the smallest normal {name} number "
            f"({info.tiny:.3g}): it rounds to zero in the state's dtype and the scaled error "
            f"overflows; {fix}"
        )
    raise ValueError(
        f"rtol={low_rtol:.3g} is below what {name} can resolve (at least {floor:.3g} "
        f"for {name}): the scaled error overflows, or rounding in the error estimate "
        f"shrinks the steps until they stop moving y or number in the millions; {fix}"
    )


def check_norm(norm: Any, y0: torch.Tensor, per_sample: bool) -> None:
    """Probe a user error norm once on the (finite) initial state, at the boundary.

    A norm that returns NaN would otherwise reject every step as if the vector field had
    produced NaN, and a norm that is not a scalar (or, per-sample, not row-wise mappable by
    ``torch.vmap``) would fail inside the controller.
    """
    probe = y0.detach()
    try:
        value = rows_norm(norm)(probe) if per_sample else norm(probe)
    except RuntimeError as err:
        if not per_sample or "vmap" not in str(err):
            raise
        raise TypeError(
            "the error norm must work on one sample's flat state and be mappable by "
            "torch.vmap with batch_dims=1 (no .item(), no Python control flow on values): "
            f"{err}"
        ) from err
    value = torch.as_tensor(value)
    want = (probe.shape[0],) if per_sample else ()
    if value.shape != want and not (not per_sample and value.numel() == 1):
        raise TypeError(
            f"the error norm must return one number per {'sample' if per_sample else 'state'}, "
            f"got a tensor of shape {tuple(value.shape)} (expected {want}); reduce over the "
            "state, e.g. norm=lambda x: x.abs().max()"
        )
    if value.is_complex() or not bool((torch.isfinite(value) & (value >= 0)).all()):
        raise ValueError(
            f"the error norm returned {value.detach().reshape(-1)[:4].tolist()} for the "
            "(finite) initial state: it must return a finite non-negative real number; fix "
            "the norm (e.g. guard divisions by zero), or leave norm at its default rms_norm"
        )


def check_stops(values: Sequence[float], name: str, lo: float, hi: float) -> None:
    """Refuse ``step_ts``/``jump_ts`` outside the solve's interval: they would be ignored."""
    outside = [t for t in values if not lo <= t <= hi]
    if outside:
        raise ValueError(
            f"{name}={outside[:5]} lie outside the solve's interval [{lo:.6g}, {hi:.6g}] and "
            "would be ignored (times in other units?); pass only times inside ts' range, or "
            "build the controller for each interval"
        )


def check_times(ts: object) -> list[float]:
    """Validate joint output times (1-D, floating, finite, strictly monotone); their values."""
    if not isinstance(ts, torch.Tensor):
        raise TypeError(
            f"ts must be a 1-D floating torch.Tensor of output times, got {type(ts).__name__}; "
            "e.g. ts=torch.linspace(0.0, 1.0, 11)"
        )
    check_tensor_input(ts, "ts")
    if not ts.is_floating_point():
        raise TypeError(
            f"ts must be floating point, got dtype {ts.dtype} (values {ts.tolist()[:5]}...); "
            "convert with ts.float() or ts.double()"
        )
    if ts.ndim != 1 or ts.numel() < 1:
        raise ValueError(
            f"ts must be 1-D with at least one time, got shape {tuple(ts.shape)}; "
            "per-sample output times need the per-sample mode"
        )
    # One host transfer, then plain Python checks: cheaper than several tensor reductions
    # and syncs for the short time grids that are the common case.
    values = ts.tolist()
    if not all(map(math.isfinite, values)):
        raise ValueError(f"ts must be finite, got {values}")
    if len(values) > 1:
        sign = 1.0 if values[1] > values[0] else -1.0
        for i, (a, b) in enumerate(zip(values, values[1:], strict=False)):
            if not sign * (b - a) > 0:
                raise ValueError(
                    "ts must be strictly increasing or strictly decreasing, but "
                    f"ts[{i}]={a} and ts[{i + 1}]={b}; remove repeated times and sort them"
                )
    return values


def check_batch(parts: tuple[torch.Tensor, ...], y0: object) -> int:
    """Per-sample mode: the batch size, the same leading dim of every part of ``y0``."""
    for i, part in enumerate(parts):
        name = "y0" if isinstance(y0, torch.Tensor) else f"y0[{i}]"
        if part.ndim < 1:
            raise ValueError(
                f"batch_dims=1 needs the samples along the first dim of {name}, got a 0-d "
                "tensor; add one with y0.unsqueeze(0)"
            )
        if part.shape[0] < 1:
            raise ValueError(
                f"{name} has an empty batch (shape {tuple(part.shape)}) with batch_dims=1: "
                "there is no sample to solve; skip the call when the batch is empty"
            )
        if part.shape[0] != parts[0].shape[0]:
            raise ValueError(
                f"every part of y0 needs the same number of samples with batch_dims=1: "
                f"y0[0] has {parts[0].shape[0]}, {name} has {part.shape[0]}"
            )
    return parts[0].shape[0]


def check_sample_times(ts: object, batch: int) -> tuple[torch.Tensor, float]:
    """Validate per-sample output times; return them as ``(B, T)`` forward time, direction.

    ``ts`` is ``(T,)`` (shared by every sample) or ``(B, T)``; each row strictly monotone,
    all in the same direction.
    """
    if not isinstance(ts, torch.Tensor) or not ts.is_floating_point():
        raise TypeError(
            "ts must be a floating torch.Tensor of output times, shape (T,) or (B, T) with "
            f"batch_dims=1, got {ts.dtype if isinstance(ts, torch.Tensor) else type(ts).__name__}"
        )
    check_tensor_input(ts, "ts")
    if ts.ndim not in (1, 2) or ts.shape[-1] < 1 or (ts.ndim == 2 and ts.shape[0] != batch):
        raise ValueError(
            f"ts must have shape (T,) or (B, T) = ({batch}, T) with batch_dims=1 and a batch "
            f"of {batch} samples, got shape {tuple(ts.shape)}"
        )
    grid = ts.detach().to(torch.float64).expand(batch, -1)
    if not bool(torch.isfinite(grid).all()):
        raise ValueError(f"ts must be finite, got {ts}")
    direction = 1.0
    if grid.shape[1] > 1:
        steps = grid[:, 1:] - grid[:, :-1]
        direction = 1.0 if float(steps[0, 0]) > 0 else -1.0
        bad = (direction * steps <= 0).nonzero()
        if bad.numel():
            b, i = bad[0].tolist()
            where = f"ts[{b}, {i}]={grid[b, i].item()} and ts[{b}, {i + 1}]={grid[b, i + 1].item()}"
            raise ValueError(
                "each sample's ts must be strictly monotone, all in the same direction "
                f"(that of ts[0]), but {where}; sort each row and remove repeated times"
            )
    return (direction * grid).contiguous(), direction


def check_args(args: object, batch: int) -> tuple[torch.Tensor, ...]:
    """Per-sample mode: ``args`` as a tuple of tensors with one row per sample."""
    parts = (args,) if isinstance(args, torch.Tensor) else tuple(args)  # type: ignore[arg-type]
    for i, a in enumerate(parts):
        if not isinstance(a, torch.Tensor) or a.ndim < 1 or a.shape[0] != batch:
            shown = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(
                f"args[{i}] must be a tensor with one row per sample (leading dim {batch}), "
                f"got {shown}; per-sample constants such as each sample's mu go in args"
            )
    return parts
