"""neuralode.compat.odeint_adjoint against torchdiffeq.odeint_adjoint (0.2.5): gradients."""

from __future__ import annotations

import pytest
import torch

import neuralode.compat
from neuralode.compat import odeint_adjoint
from neuralode.compat import odeint_adjoint as odeint

torchdiffeq = pytest.importorskip("torchdiffeq")

D = torch.float64
T = (0.0, 0.5, 1.0, 1.5)


class Field(torch.nn.Module):
    """A small time-dependent MLP field 2 → 8 → 2; counts its calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
        ).to(D)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.net(y) * torch.cos(t)


def initial_state() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 2, dtype=D, generator=g)


def weighted(out: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.sum(out * torch.randn(out.shape, dtype=D, generator=g))


def gradients(odeint_fn, func, params, **kwargs):
    """Gradients of a fixed weighted loss w.r.t. (y0, t, *params), and f's backward calls."""
    y0 = initial_state().requires_grad_(True)
    t = torch.tensor(T, dtype=D, requires_grad=True)
    out = odeint_fn(func, y0, t, **kwargs)
    calls_before = getattr(func, "calls", 0)
    grads = torch.autograd.grad(weighted(out), (y0, t, *params))
    return grads, getattr(func, "calls", 0) - calls_before


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


NORMS = [pytest.param({}, id="mixed_norm"), pytest.param({"norm": "seminorm"}, id="seminorm")]


@pytest.mark.parametrize("adjoint_norm", NORMS)
def test_dopri5_gradients_match_torchdiffeq(adjoint_norm):
    func = Field()
    params = list(func.parameters())
    kwargs = dict(rtol=1e-8, atol=1e-8, method="dopri5", adjoint_options=adjoint_norm or None)
    ours, _ = gradients(odeint_adjoint, func, params, **kwargs)
    theirs, _ = gradients(torchdiffeq.odeint_adjoint, func, params, **kwargs)
    assert min(float(g.abs().max()) for g in theirs) > 1e-2
    assert max_diff(ours, theirs) < 1e-6


@pytest.mark.parametrize("adjoint_norm", NORMS)
def test_rk4_gradients_match_torchdiffeq(adjoint_norm):
    func = Field()
    params = list(func.parameters())
    kwargs = dict(
        method="rk4",
        options={"step_size": 0.05},
        adjoint_options={"step_size": 0.05, **adjoint_norm},
    )
    ours, _ = gradients(odeint_adjoint, func, params, **kwargs)
    theirs, _ = gradients(torchdiffeq.odeint_adjoint, func, params, **kwargs)
    assert min(float(g.abs().max()) for g in theirs) > 1e-2
    assert max_diff(ours, theirs) < 1e-6


# Until fixed, the backward grid is built from t (which requires grad) and torch warns once.
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True")
def test_rk4_backward_inherits_forward_options():
    func = Field()
    params = list(func.parameters())
    kwargs = dict(method="rk4", options={"step_size": 0.05})
    ours, _ = gradients(odeint_adjoint, func, params, **kwargs)
    theirs, _ = gradients(torchdiffeq.odeint_adjoint, func, params, **kwargs)
    assert max_diff(ours, theirs) < 1e-6


def test_adjoint_params_for_a_plain_function():
    g = torch.Generator().manual_seed(3)
    W = (0.5 * torch.randn(2, 2, dtype=D, generator=g)).requires_grad_(True)
    b = (0.1 * torch.randn(2, dtype=D, generator=g)).requires_grad_(True)

    def func(t, y):
        return torch.tanh(y @ W.T + b) - 0.1 * t * y

    kwargs = dict(rtol=1e-8, atol=1e-8, adjoint_params=[W, b])
    ours, _ = gradients(odeint_adjoint, func, [W, b], **kwargs)
    theirs, _ = gradients(torchdiffeq.odeint_adjoint, func, [W, b], **kwargs)
    assert float(ours[2].abs().max()) > 1e-2
    assert max_diff(ours, theirs) < 1e-6


def test_module_with_a_frozen_parameter_matches_torchdiffeq():
    func = Field()
    func.net[0].bias.requires_grad_(False)
    trainable = [p for p in func.parameters() if p.requires_grad]
    ours, _ = gradients(odeint_adjoint, func, trainable, rtol=1e-8, atol=1e-8)
    theirs, _ = gradients(torchdiffeq.odeint_adjoint, func, trainable, rtol=1e-8, atol=1e-8)
    assert max_diff(ours, theirs) < 1e-6


def test_adjoint_params_that_do_not_require_grad():
    W = torch.tensor([[0.3, -0.5], [0.4, 0.1]], dtype=D, requires_grad=True)
    c = torch.tensor(0.2, dtype=D)  # a constant listed among the adjoint params

    def func(t, y):
        return torch.tanh(y @ W.T) - c * y

    theirs, _ = gradients(torchdiffeq.odeint_adjoint, func, [W], adjoint_params=[W, c])
    ours, _ = gradients(odeint_adjoint, func, [W], adjoint_params=[W, c])
    assert max_diff(ours, theirs) < 1e-6


def test_tuple_state_matches_torchdiffeq():
    W = torch.tensor([[0.3, -0.5], [0.4, 0.1]], dtype=D, requires_grad=True)

    def func(t, state):
        a, B = state
        return torch.tanh(a @ W), torch.sin(B) * a.sum()

    def grads(odeint_fn):
        a0 = torch.tensor([0.5, -0.2], dtype=D, requires_grad=True)
        B0 = torch.tensor([[0.1, 0.3, -0.4]], dtype=D, requires_grad=True)
        t = torch.tensor(T, dtype=D)
        a, B = odeint_fn(func, (a0, B0), t, rtol=1e-8, atol=1e-8, adjoint_params=[W])
        assert a.shape == (4, 2) and B.shape == (4, 1, 3)
        return torch.autograd.grad(weighted(a) + weighted(B), (a0, B0, W))

    ours, theirs = grads(odeint_adjoint), grads(torchdiffeq.odeint_adjoint)
    assert float(ours[2].abs().max()) > 1e-2
    assert max_diff(ours, theirs) < 1e-6


def test_adjoint_method_differs_from_forward():
    # Forward dopri5 at 1e-10, backward rk4 with coarse steps of 0.25: the same backward
    # grid as torchdiffeq's, so y0 and parameter gradients agree to ~1e-10...
    func = Field()
    params = list(func.parameters())
    kwargs = dict(rtol=1e-10, atol=1e-10, adjoint_method="rk4", adjoint_options={"step_size": 0.25})
    ours, _ = gradients(odeint_adjoint, func, params, **kwargs)
    theirs, _ = gradients(torchdiffeq.odeint_adjoint, func, params, **kwargs)
    no_t = [0, *range(2, len(ours))]  # torchdiffeq integrates dL/dt0 with the coarse rk4 too
    assert max_diff([ours[i] for i in no_t], [theirs[i] for i in no_t]) < 1e-8
    assert float((ours[1] - theirs[1]).abs().max()) < 1e-5
    # ...and differ from the tight adjoint gradient by the coarse rk4's error.
    tight, _ = gradients(odeint_adjoint, func, params, rtol=1e-10, atol=1e-10)
    assert float((ours[0] - tight[0]).abs().max()) > 5e-7


@pytest.mark.parametrize(
    "forward, adjoint",
    [
        (dict(rtol=1e-6, atol=1e-12), dict(adjoint_rtol=1e-10)),
        (dict(rtol=1e-12, atol=1e-6), dict(adjoint_atol=1e-10)),
    ],
    ids=["adjoint_rtol", "adjoint_atol"],
)
def test_adjoint_tolerances_differ_from_forward(forward, adjoint):
    func = Field()
    params = list(func.parameters())
    _, default_calls = gradients(odeint_adjoint, func, params, **forward)
    ours, calls = gradients(odeint_adjoint, func, params, **forward, **adjoint)
    theirs, _ = gradients(torchdiffeq.odeint_adjoint, func, params, **forward, **adjoint)
    assert calls > default_calls  # the backward solve ran at its own, tighter tolerance
    assert max_diff(ours, theirs) < 1e-6


def test_plain_function_without_adjoint_params_is_a_value_error_like_torchdiffeq():
    W = torch.eye(2, dtype=D, requires_grad=True)

    def func(t, y):
        return y @ W

    y0, t = initial_state(), torch.tensor(T, dtype=D)
    with pytest.raises(ValueError, match="adjoint_params"):
        torchdiffeq.odeint_adjoint(func, y0, t)
    with pytest.raises(ValueError, match="adjoint_params"):
        odeint_adjoint(func, y0, t)
    # adjoint_params=() is the documented way to say "no parameters".
    y0 = y0.requires_grad_(True)
    (g,) = torch.autograd.grad(odeint_adjoint(func, y0, t, adjoint_params=()).sum(), y0)
    assert torch.isfinite(g).all() and float(g.abs().min()) > 0


@pytest.mark.parametrize("adjoint_options", [{"bogus": 1}, {"step_size": 0.1}])
def test_unknown_adjoint_option_warns_like_torchdiffeq(adjoint_options):
    func = Field()
    key = next(iter(adjoint_options))
    with pytest.warns(UserWarning, match=rf"Unexpected arguments \{{'{key}'"):
        odeint_adjoint(
            func, initial_state(), torch.tensor(T, dtype=D), adjoint_options=adjoint_options
        ).sum().backward()


def test_bad_adjoint_norm_is_a_value_error():
    with pytest.raises(ValueError, match=r"adjoint_options\['norm'\] must be 'seminorm' or a"):
        odeint_adjoint(
            Field(), initial_state(), torch.tensor(T, dtype=D), adjoint_options={"norm": "max"}
        )


def test_drop_in_training_step_reduces_the_loss():
    assert odeint is neuralode.compat.odeint_adjoint
    func = Field(seed=4)
    y0 = initial_state()
    t = torch.tensor([0.0, 1.0], dtype=D)
    target = 0.5 * y0.flip(-1)
    optimizer = torch.optim.Adam(func.parameters(), lr=0.05)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = torch.mean((odeint(func, y0, t, rtol=1e-6, atol=1e-6)[-1] - target) ** 2)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in func.parameters())
    assert losses[-1] < 0.8 * losses[0]
