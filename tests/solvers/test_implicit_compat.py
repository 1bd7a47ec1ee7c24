"""The implicit methods under torchdiffeq's (development) names in neuralode.compat."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no
from neuralode.compat import METHODS, odeint

D = torch.float64
NAMES = {
    "implicit_euler": no.ImplicitEuler,
    "implicit_midpoint": no.ImplicitMidpoint,
    "trapezoid": no.Trapezoid,
    "sdirk2": no.SDIRK2,
    "trbdf2": no.TRBDF2,
    "radauIIA3": no.RadauIIA3,
    "radauIIA5": no.RadauIIA5,
    "gl4": no.GaussLegendre4,
    "gl6": no.GaussLegendre6,
}
# Not L-stable: the stiff mode's error decays slowly (|R(∞)| = 1), so a coarse bound.
A_ONLY = {"implicit_midpoint", "gl4", "gl6"}


def stiff(t, y):
    # Stiff linear decay towards cos(t) (Prothero–Robinson with λ = −1e4).
    return -1e4 * (y - torch.cos(t)) - torch.sin(t)


@pytest.mark.parametrize("name", list(NAMES))
def test_method_names_give_the_native_solvers(name):
    assert METHODS[name] is NAMES[name]
    ts = torch.linspace(0.0, 1.0, 5, dtype=D)
    y0 = torch.tensor([1.0, 1.0], dtype=D)
    ours = odeint(stiff, y0, ts, method=name, options={"step_size": 0.05})
    native = no.solve(
        stiff, y0, ts, solver=NAMES[name](interpolation="linear"),
        controller=no.ConstantStepSize(0.05),
    ).ys  # fmt: skip
    torch.testing.assert_close(ours, native, rtol=0, atol=0)
    # Stable at a step 500 times the explicit limit, and on the slow solution cos(t).
    error = float((ours - torch.cos(ts)[:, None]).abs().max())
    assert error < (0.5 if name in A_ONLY else 5e-3)


def test_cubic_interp_is_hermite():
    ts = torch.tensor([0.0, 0.33, 1.0], dtype=D)
    y0 = torch.tensor([1.0], dtype=D)
    cubic = odeint(stiff, y0, ts, method="trbdf2", options={"step_size": 0.1, "interp": "cubic"})
    linear = odeint(stiff, y0, ts, method="trbdf2", options={"step_size": 0.1})
    assert abs(float(cubic[1, 0]) - math.cos(0.33)) < abs(float(linear[1, 0]) - math.cos(0.33))
