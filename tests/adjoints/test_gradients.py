"""Gradients of solve() for every gradient method: gradcheck, agreement, edge cases.

Methods: DirectAdjoint (backprop through the solver), BacksolveAdjoint (the adjoint ODE
solved backwards, full norm and seminorm) and CheckpointAdjoint (exact replay). Direct and
Checkpoint differentiate the discrete solution exactly; Backsolve approximates it to the
solver tolerance, which is why gradcheck runs at rtol = atol = 1e-10.

gradcheck's own tolerances: with an adaptive solver the step sizes are chosen under
no_grad, so the finite differences also see the (tolerance-sized) effect of the step
sizes moving with the inputs: measured up to ~5e-8 at solver tolerance 1e-10. Fixed steps
have no such effect (measured ~1e-9), but backsolve's backward RK4 differs from the exact
discrete gradient by O(dt^4) (~3e-8). The tolerances below sit above those and far below
the size of any real gradient error; ``test_gradcheck_tolerances_catch_small_errors``
shows that a relative gradient error of 1e-4 fails them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

import neuralode as no
from generic import ALL_ADJOINTS

D = torch.float64

METHODS = ALL_ADJOINTS
REPLAYING = ["backsolve", "backsolve_seminorm", "checkpoint"]  # re-run f in backward
TIGHT = 1e-10


def tight_pid(tol: float = TIGHT) -> no.PIDController:
    return no.PIDController(rtol=tol, atol=tol)


# (solver, controller, gradcheck atol)
SOLVERS = {
    "dopri5": (no.Dopri5(), tight_pid(), 2e-7),
    "tsit5": (no.Tsit5(), tight_pid(), 2e-7),
    "rk4": (no.RK4(), no.ConstantStepSize(0.05), 1e-8),
}
GRADCHECK_RTOL = 1e-6
# The variant checks run gradcheck's fast mode (a random projection of the Jacobian) by
# default and the full Jacobian comparison with the slow tests.
MODES = [
    pytest.param(True, id="fast"),
    pytest.param(False, id="full", marks=pytest.mark.slow),
]


def field(t, y, W, b):
    """A small nonlinear, non-autonomous field (so that t0 matters)."""
    return torch.tanh(y @ W.T + b) + 0.1 * torch.sin(t) * y


def make_inputs(dim: int = 2, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(batch, dim, dtype=D, generator=g)
    W = 0.5 * torch.randn(dim, dim, dtype=D, generator=g)
    b = 0.2 * torch.randn(dim, dtype=D, generator=g)
    return y0, W, b


TS = (0.0, 0.3, 0.7, 1.0)


def ts_tensor(values=TS, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=D, requires_grad=requires_grad)


def functional_solve(method: str, solver_name: str, *, dense: bool = False):
    solver, controller, _ = SOLVERS[solver_name]

    def fn(y0, W, b, ts):
        return no.solve(
            lambda t, y: field(t, y, W, b),
            y0,
            ts,
            solver=solver,
            controller=controller,
            adjoint=METHODS[method],
            params=[W, b],
            dense=dense,
        ).ys

    return fn


def leaves(*tensors):
    return tuple(t.detach().clone().requires_grad_(True) for t in tensors)


def gradcheck_atol(method: str, solver_name: str) -> float:
    atol = SOLVERS[solver_name][2]
    if method.startswith("backsolve") and not SOLVERS[solver_name][0].adaptive:
        # Fixed steps: the backward RK4 solve of the adjoint ODE is not the adjoint of the
        # forward RK4 steps; it differs by O(dt^4) (measured up to 3e-8 at dt = 0.05).
        atol = 1e-7
    return atol


def run_gradcheck(fn, inputs, method: str, solver_name: str, *, fast: bool = False) -> bool:
    atol = gradcheck_atol(method, solver_name)
    return gradcheck(fn, inputs, eps=1e-6, atol=atol, rtol=GRADCHECK_RTOL, fast_mode=fast)


def weights_like(ys, seed: int = 1):
    """Fixed random output cotangents (a tensor or a tuple of them)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(ys, torch.Tensor):
        return torch.randn(ys.shape, dtype=D, generator=g)
    return tuple(torch.randn(y.shape, dtype=D, generator=g) for y in ys)


def weighted_loss(ys, weights):
    if isinstance(ys, torch.Tensor):
        return torch.sum(ys * weights)
    return sum(torch.sum(y * w) for y, w in zip(ys, weights, strict=True))


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------
# gradcheck: y0, parameters and output times


@pytest.mark.parametrize("solver_name", ["dopri5", "rk4"])
@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_functional_field(method, solver_name):
    y0, W, b = make_inputs()
    inputs = leaves(y0, W, b, ts_tensor())
    assert run_gradcheck(functional_solve(method, solver_name), inputs, method, solver_name)


@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_tsit5_fast_mode(method):
    y0, W, b = make_inputs()
    inputs = leaves(y0, W, b, ts_tensor(TS + (1.4,)))
    assert run_gradcheck(functional_solve(method, "tsit5"), inputs, method, "tsit5", fast=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_tsit5_full(method):
    y0, W, b = make_inputs(dim=3)
    inputs = leaves(y0, W, b, ts_tensor(TS + (1.4,)))
    assert run_gradcheck(functional_solve(method, "tsit5"), inputs, method, "tsit5")


@pytest.mark.parametrize("fast", MODES)
@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_output_times_only(method, fast):
    # Only ts is checked: the t0 and t_i gradients must reach it through y0 / ys. (W and
    # b require grad: constants in params= hit a bug, see test_params_that_do_not_require_grad.)
    y0, W, b = make_inputs()
    W, b = leaves(W, b)
    fn = functional_solve(method, "dopri5")
    ts = ts_tensor(requires_grad=True)
    assert run_gradcheck(lambda ts: fn(y0, W, b, ts), (ts,), method, "dopri5", fast=fast)


class MLPField(torch.nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 3, unused: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dim)
        ).to(D)
        if unused:
            self.unused = torch.nn.Parameter(torch.ones(3, 2, dtype=D))

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


@pytest.mark.parametrize("fast", MODES)
@pytest.mark.parametrize("solver_name", ["dopri5", "rk4"])
@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_module_field(method, solver_name, fast):
    # gradcheck perturbs its inputs in place, so passing the module's own parameters
    # checks exactly what a user gets from .backward() on a module field.
    module = MLPField()
    solver, controller, _ = SOLVERS[solver_name]
    y0, _, _ = make_inputs()
    params = tuple(module.parameters())

    def fn(y0, ts, *params_):
        return no.solve(
            module, y0, ts, solver=solver, controller=controller, adjoint=METHODS[method]
        ).ys

    inputs = (*leaves(y0, ts_tensor()), *params)
    assert run_gradcheck(fn, inputs, method, solver_name, fast=fast)


def tuple_field(t, y, W):
    a, B = y
    return (torch.tanh(a @ W) * B.mean(), torch.sin(B) * a.sum() - 0.1 * t * B)


def tuple_inputs():
    g = torch.Generator().manual_seed(3)
    a0 = torch.randn(2, dtype=D, generator=g)
    B0 = torch.randn(1, 3, dtype=D, generator=g)
    W = 0.5 * torch.randn(2, 2, dtype=D, generator=g)
    return a0, B0, W


def tuple_solve(method: str, solver_name: str = "dopri5"):
    solver, controller, _ = SOLVERS[solver_name]

    def fn(a0, B0, W, ts):
        return no.solve(
            lambda t, y: tuple_field(t, y, W),
            (a0, B0),
            ts,
            solver=solver,
            controller=controller,
            adjoint=METHODS[method],
            params=[W],
        ).ys

    return fn


@pytest.mark.parametrize("fast", MODES)
@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_tuple_state(method, fast):
    a0, B0, W = tuple_inputs()
    fn = tuple_solve(method)
    ys = fn(a0, B0, W, ts_tensor())
    assert isinstance(ys, tuple)
    assert ys[0].shape == (4, 2) and ys[1].shape == (4, 1, 3)
    assert run_gradcheck(fn, leaves(a0, B0, W, ts_tensor()), method, "dopri5", fast=fast)


REVERSE_TS = (1.0, 0.6, 0.2, -0.3)


@pytest.mark.parametrize("fast", MODES)
@pytest.mark.parametrize("solver_name", ["dopri5", "rk4"])
@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_reverse_time(method, solver_name, fast):
    y0, W, b = make_inputs(seed=4)
    inputs = leaves(y0, W, b, ts_tensor(REVERSE_TS))
    assert run_gradcheck(
        functional_solve(method, solver_name), inputs, method, solver_name, fast=fast
    )


@pytest.mark.parametrize("fast", MODES)
@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_single_interval(method, fast):
    y0, W, b = make_inputs(seed=5)
    inputs = leaves(y0, W, b, ts_tensor((0.2, 1.1)))
    assert run_gradcheck(functional_solve(method, "dopri5"), inputs, method, "dopri5", fast=fast)


class _PerturbGradient(torch.autograd.Function):
    """Identity whose backward scales the gradient by (1 + rel): a known wrong gradient."""

    @staticmethod
    def forward(ctx, x, rel):
        ctx.rel = rel
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * (1 + ctx.rel), None


@pytest.mark.parametrize("solver_name", ["dopri5", "rk4"])
def test_gradcheck_tolerances_catch_small_errors(solver_name):
    # The tolerances used above are tight enough to reject a 1e-4 relative error...
    y0, W, b = make_inputs()
    fn = functional_solve("direct", solver_name)
    inputs = leaves(y0, W, b, ts_tensor())
    atol = gradcheck_atol("direct", solver_name)

    def wrong(*args):
        return _PerturbGradient.apply(fn(*args), 1e-4)

    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        gradcheck(wrong, inputs, eps=1e-6, atol=atol, rtol=GRADCHECK_RTOL)
    # (test_gradcheck_functional_field[direct-*] passes the unperturbed function.)


@pytest.mark.parametrize(
    "backward_tol, passes", [(1e-3, False), pytest.param(TIGHT, True, marks=pytest.mark.slow)]
)
def test_gradcheck_measures_backsolve_accuracy(backward_tol, passes):
    # Backsolve's gradient is only as accurate as its backward solve: with that solve at
    # 1e-3 (error ~2e-5 here) the check fails; at 1e-10 the same check passes.
    y0, W, b = make_inputs()
    adjoint = no.BacksolveAdjoint(controller=tight_pid(backward_tol))

    def fn(y0, W, b, ts):
        return no.solve(
            lambda t, y: field(t, y, W, b),
            y0,
            ts,
            controller=tight_pid(),
            adjoint=adjoint,
            params=[W, b],
        ).ys

    inputs = leaves(y0, W, b, ts_tensor((0.0, 1.0, 2.0, 3.0)))
    ok = gradcheck(fn, inputs, eps=1e-6, atol=2e-7, rtol=GRADCHECK_RTOL, raise_exception=False)
    assert ok is passes


# --------------------------------------------------------------------------------------
# The methods agree with each other and with finite differences


def grads_of(method: str, solver_name: str, y0, W, b, ts, *, seed: int = 1):
    y0, W, b, ts = leaves(y0, W, b, ts)
    ys = functional_solve(method, solver_name)(y0, W, b, ts)
    loss = weighted_loss(ys, weights_like(ys, seed))
    return torch.autograd.grad(loss, (y0, W, b, ts))


def grads_at(method, solver, controller, y0, W, b, ts):
    y0, W, b, ts = leaves(y0, W, b, ts)
    ys = no.solve(
        lambda t, y: field(t, y, W, b),
        y0,
        ts,
        solver=solver,
        controller=controller,
        adjoint=METHODS[method],
        params=[W, b],
    ).ys
    return torch.autograd.grad(weighted_loss(ys, weights_like(ys)), (y0, W, b, ts))


@pytest.mark.parametrize(
    "solver, controller",
    [
        (no.Dopri5(), tight_pid(1e-8)),
        (no.Tsit5(), tight_pid(1e-6)),
        (no.RK4(), no.ConstantStepSize(0.1)),
    ],
    ids=["dopri5", "tsit5", "rk4"],
)
def test_checkpoint_equals_direct(solver, controller):
    y0, W, b = make_inputs(dim=3)
    ts = ts_tensor(TS + (1.5,))
    direct = grads_at("direct", solver, controller, y0, W, b, ts)
    checkpoint = grads_at("checkpoint", solver, controller, y0, W, b, ts)
    assert min(float(g.abs().max()) for g in direct) > 1e-2  # not trivially zero
    assert max_diff(direct, checkpoint) < 1e-12


@pytest.mark.parametrize("method", ["backsolve", "backsolve_seminorm"])
def test_backsolve_matches_direct_at_tight_tolerance(method):
    y0, W, b = make_inputs(dim=3)
    ts = ts_tensor(TS + (1.5,))
    direct = grads_at("direct", no.Dopri5(), tight_pid(), y0, W, b, ts)
    back = grads_at(method, no.Dopri5(), tight_pid(), y0, W, b, ts)
    assert max_diff(direct, back) < 1e-7
    # At a loose tolerance the approximation is visibly worse (the comparison can fail).
    loose = grads_at(method, no.Dopri5(), tight_pid(1e-3), y0, W, b, ts)
    assert max_diff(direct, loose) > 1e-6


def central_differences(loss_fn, x: torch.Tensor, h: float) -> torch.Tensor:
    out = torch.zeros_like(x)
    flat = out.view(-1)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = h
        step = step.view_as(x)
        flat[i] = (loss_fn(x + step) - loss_fn(x - step)) / (2 * h)
    return out


@pytest.mark.parametrize(
    "solver, controller, tol",
    [(no.Dopri5(), tight_pid(1e-12), 1e-6), (no.RK4(), no.ConstantStepSize(0.02), 1e-8)],
    ids=["dopri5", "rk4"],
)
@pytest.mark.parametrize("method", list(METHODS))
def test_gradients_match_finite_differences(method, solver, controller, tol):
    y0, W, b = make_inputs(seed=7)
    ts = ts_tensor()
    weights = weights_like(torch.empty(len(TS), 2, 2))

    def loss(y0_, W_):
        with torch.no_grad():
            ys = no.solve(
                lambda t, y: field(t, y, W_, b), y0_, ts, solver=solver, controller=controller
            ).ys
        return float(torch.sum(ys * weights))

    g_y0, g_W, *_ = grads_at(method, solver, controller, y0, W, b, ts)
    fd_y0 = central_differences(lambda x: loss(x, W), y0, 1e-5)
    fd_W = central_differences(lambda x: loss(y0, x), W, 1e-5)
    assert float(fd_W.abs().max()) > 0.1
    assert float((g_y0 - fd_y0).abs().max()) < tol
    assert float((g_W - fd_W).abs().max()) < tol


# --------------------------------------------------------------------------------------
# Unused parameters, tuple states, reverse time, output counts, unused outputs


@pytest.mark.parametrize("method", REPLAYING)
def test_unused_module_parameter_gets_zero_gradient(method):
    module = MLPField(unused=True)
    y0, _, _ = make_inputs()
    sol = no.solve(module, y0, ts_tensor(), adjoint=METHODS[method])
    sol.ys.sum().backward()
    assert module.unused.grad is not None
    assert module.unused.grad.shape == module.unused.shape
    assert torch.equal(module.unused.grad, torch.zeros_like(module.unused))
    assert float(module.net[0].weight.grad.abs().max()) > 0


def test_direct_leaves_unused_module_parameter_grad_none():
    # Plain autograd semantics: a parameter no operation used gets no .grad at all.
    module = MLPField(unused=True)
    y0, _, _ = make_inputs()
    no.solve(module, y0, ts_tensor(), adjoint=no.DirectAdjoint()).ys.sum().backward()
    assert module.unused.grad is None
    assert module.net[0].weight.grad is not None


@pytest.mark.parametrize("method", REPLAYING)
def test_unused_explicit_param_gets_zero_gradient(method):
    y0, W, b = make_inputs()
    W, b = leaves(W, b)
    spare = torch.ones(4, dtype=D, requires_grad=True)
    ys = no.solve(
        lambda t, y: field(t, y, W, b),
        y0,
        ts_tensor(),
        adjoint=METHODS[method],
        params=[W, b, spare],
    ).ys
    g_W, g_spare = torch.autograd.grad(ys.sum(), (W, spare), allow_unused=True)
    assert g_spare is not None and torch.equal(g_spare, torch.zeros(4, dtype=D))
    assert float(g_W.abs().max()) > 0


@pytest.mark.parametrize("method", ["backsolve", "backsolve_seminorm", "checkpoint"])
def test_tuple_state_methods_agree(method):
    a0, B0, W = tuple_inputs()
    ts = ts_tensor(TS + (1.5,))

    def grads(name):
        a, B, W_, t = leaves(a0, B0, W, ts)
        ys = tuple_solve(name)(a, B, W_, t)
        return torch.autograd.grad(weighted_loss(ys, weights_like(ys)), (a, B, W_, t))

    direct, other = grads("direct"), grads(method)
    assert [g.shape for g in other] == [(2,), (1, 3), (2, 2), (5,)]
    assert max_diff(direct, other) < (1e-12 if method == "checkpoint" else 1e-7)


@pytest.mark.parametrize("method", list(METHODS))
def test_reverse_time_equals_forward_time_of_the_mirrored_problem(method):
    # y' = f(t, y) from t=1 down to -0.3 is z' = -f(-s, z) from s=-1 up to 0.3.
    y0, W, b = make_inputs(seed=8)
    rev_ts = ts_tensor(REVERSE_TS)
    weights = weights_like(torch.empty(len(REVERSE_TS), 2, 2))

    def grads(f_of, ts_values):
        y0_, W_, b_, ts = leaves(y0, W, b, ts_tensor(ts_values))
        ys = no.solve(
            f_of(W_, b_), y0_, ts, controller=tight_pid(), adjoint=METHODS[method], params=[W_, b_]
        ).ys
        return torch.autograd.grad(torch.sum(ys * weights), (y0_, W_, b_, ts))

    reverse = grads(lambda W_, b_: lambda t, y: field(t, y, W_, b_), REVERSE_TS)
    mirrored = grads(
        lambda W_, b_: lambda s, z: -field(-s, z, W_, b_), tuple(-t for t in rev_ts.tolist())
    )
    assert max_diff(reverse[:3], mirrored[:3]) < 1e-8
    assert float((reverse[3] + mirrored[3]).abs().max()) < 1e-8  # dL/dt = -dL/ds
    assert float(reverse[1].abs().max()) > 1e-2


@pytest.mark.parametrize("method", ["backsolve", "backsolve_seminorm", "checkpoint"])
@pytest.mark.parametrize("n_times", [2, 41], ids=["pair", "many"])
def test_output_counts_agree_with_direct(method, n_times):
    y0, W, b = make_inputs(dim=3, seed=9)
    ts = torch.linspace(0.0, 2.0, n_times, dtype=D)
    direct = grads_of("direct", "dopri5", y0, W, b, ts)
    other = grads_of(method, "dopri5", y0, W, b, ts)
    assert direct[3].shape == (n_times,)
    assert max_diff(direct, other) < (1e-12 if method == "checkpoint" else 1e-7)


@pytest.mark.parametrize("method", list(METHODS))
def test_outputs_left_out_of_the_loss(method):
    # Only ys[1] enters the loss: the other outputs' cotangents are zero.
    y0, W, b = make_inputs(seed=10)
    y0_, W_, b_, ts = leaves(y0, W, b, ts_tensor(TS + (1.3,)))
    ys = functional_solve(method, "dopri5")(y0_, W_, b_, ts)
    g = torch.autograd.grad(torch.sum(ys[1] ** 2), (y0_, W_, b_, ts))
    assert torch.equal(g[3][2:], torch.zeros(3, dtype=D))  # later times do not matter
    assert float(g[3][1].abs()) > 1e-3 and float(g[3][0].abs()) > 1e-3
    # Same gradient as a solve that stops at ts[1] (Direct is exact: step sizes do not
    # depend on later output times except through the last step, so compare to 1e-7).
    y0_s, W_s, b_s, ts_s = leaves(y0, W, b, ts_tensor(TS[:2]))
    ys_s = functional_solve("direct", "dopri5")(y0_s, W_s, b_s, ts_s)
    g_s = torch.autograd.grad(torch.sum(ys_s[1] ** 2), (y0_s, W_s, b_s, ts_s))
    assert max_diff(g[:3], g_s[:3]) < 1e-7
    assert float((g[3][:2] - g_s[3]).abs().max()) < 1e-7


@pytest.mark.parametrize("method", list(METHODS))
def test_single_output_time_passes_the_cotangent_through(method):
    y0, W, b = make_inputs()
    y0_, W_, b_, ts = leaves(y0, W, b, ts_tensor((0.5,)))
    ys = functional_solve(method, "dopri5")(y0_, W_, b_, ts)
    g_y0, g_W, g_ts = torch.autograd.grad(torch.sum(ys * 3.0), (y0_, W_, ts), allow_unused=True)
    assert torch.equal(g_y0, torch.full_like(y0, 3.0))
    assert g_W is None or torch.equal(g_W, torch.zeros_like(W))
    # y(t0) = y0 whatever t0 is: the contributions f(t0)·g and -f(t0)·g cancel.
    assert float(g_ts.abs().max()) < 1e-12


# --------------------------------------------------------------------------------------
# Plain functions and params=, statistics, dense output


@pytest.mark.parametrize("method", REPLAYING)
def test_closure_without_params_is_a_clear_error(method):
    y0, W, b = make_inputs()
    W.requires_grad_(True)
    with pytest.raises(ValueError, match=r"params=\[\.\.\.\]"):
        no.solve(lambda t, y: field(t, y, W, b), y0, ts_tensor(), adjoint=METHODS[method])


@pytest.mark.parametrize("method", REPLAYING)
def test_closure_with_params_matches_direct(method):
    y0, W, b = make_inputs()
    direct = grads_of("direct", "dopri5", y0, W, b, ts_tensor())
    other = grads_of(method, "dopri5", y0, W, b, ts_tensor())
    assert max_diff(direct, other) < (1e-12 if method == "checkpoint" else 1e-6)


@pytest.mark.parametrize("method", REPLAYING)
def test_empty_params_for_a_parameter_free_field(method):
    y0 = torch.tensor([[1.0, 0.5]], dtype=D, requires_grad=True)
    ts = ts_tensor()
    ys = no.solve(
        lambda t, y: -y, y0, ts, controller=tight_pid(), adjoint=METHODS[method], params=()
    ).ys
    (g,) = torch.autograd.grad(ys[-1].sum(), y0)
    assert torch.allclose(g, torch.full_like(y0, math.exp(-1.0)), rtol=1e-8, atol=0)


def test_nfe_backward_is_zero_for_direct():
    module = MLPField()
    y0, _, _ = make_inputs()
    sol = no.solve(module, y0, ts_tensor(), adjoint=no.DirectAdjoint())
    sol.ys.sum().backward()
    assert sol.stats.nfe > 0
    assert sol.stats.nfe_backward == 0


@pytest.mark.parametrize("method", REPLAYING)
def test_nfe_backward_is_filled_after_backward(method):
    module = MLPField()
    y0, _, _ = make_inputs()
    sol = no.solve(module, y0, ts_tensor(), adjoint=METHODS[method])
    assert sol.stats.nfe_backward == 0
    sol.ys.sum().backward()
    assert sol.stats.nfe_backward > 0
    if method == "checkpoint":
        # One replay per accepted step: at least one evaluation per stage of each step.
        assert sol.stats.nfe_backward >= 6 * sol.stats.accepted


def _seminorm_reference(seminorm: bool):
    """MLP 2→32→2, batch 64, dopri5 at rtol = atol = 1e-6: (stats, gradients)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).to(D)
    y0 = torch.randn(64, 2, dtype=D)
    sol = no.solve(
        lambda t, y: net(y),
        y0,
        torch.tensor([0.0, 2.0], dtype=D),
        controller=no.PIDController(rtol=1e-6, atol=1e-6),
        adjoint=no.BacksolveAdjoint(seminorm=seminorm),
        params=list(net.parameters()),
    )
    (sol.ys[-1] ** 2).sum().backward()
    return sol.stats, [p.grad for p in net.parameters()]


def test_seminorm_needs_fewer_backward_evaluations():
    full, g_full = _seminorm_reference(False)
    semi, g_semi = _seminorm_reference(True)
    assert full.nfe == semi.nfe  # same forward solve
    assert 0 < semi.nfe_backward < full.nfe_backward
    # Both still give the gradient (to the backward tolerance).
    scale = max(float(g.abs().max()) for g in g_full)
    assert max_diff(g_full, g_semi) < 1e-3 * scale


@pytest.mark.parametrize("method", REPLAYING)
def test_dense_with_replaying_methods_is_a_clear_error(method):
    y0, W, b = make_inputs()
    with pytest.raises(ValueError, match="dense=True"):
        functional_solve(method, "dopri5", dense=True)(y0, W, b, ts_tensor())


def test_dense_with_direct_is_differentiable():
    y0, W, b = make_inputs()
    y0_, W_, b_ = leaves(y0, W, b)
    sol = no.solve(
        lambda t, y: field(t, y, W_, b_), y0_, ts_tensor(), adjoint=no.DirectAdjoint(), dense=True
    )
    assert sol.dense is not None
    assert sol.ys.requires_grad


def test_backsolve_dense_error_recommends_a_method_that_supports_dense():
    y0, W, b = make_inputs()
    with pytest.raises(ValueError) as info:
        functional_solve("backsolve", "dopri5", dense=True)(y0, W, b, ts_tensor())
    assert "CheckpointAdjoint" not in str(info.value)


@pytest.mark.parametrize("method", REPLAYING)
def test_params_that_do_not_require_grad(method):
    y0, W, b = make_inputs()
    W_ = W.clone().requires_grad_(True)  # b stays a constant
    ys = no.solve(
        lambda t, y: field(t, y, W_, b), y0, ts_tensor(), adjoint=METHODS[method], params=[W_, b]
    ).ys
    (g,) = torch.autograd.grad(ys.sum(), W_)
    (g_direct,) = torch.autograd.grad(
        no.solve(lambda t, y: field(t, y, W_, b), y0, ts_tensor()).ys.sum(), W_
    )
    assert float((g - g_direct).abs().max()) < 1e-5
