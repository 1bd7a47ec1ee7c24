"""Solves off the default device: what a GPU run needs, checked on every machine too.

On a GPU the state lives on the device, while a tensor created without ``device=`` lands
on the CPU, and an operation that mixes the two fails (a 0-d CPU tensor excepted: it
acts as a scalar). One list of scenarios, two checks:

- **simulated**, on every machine: each scenario runs again with every tensor of more
  than 0 dimensions that neuralode creates without naming a device put on the ``meta``
  device instead, where it can meet the CPU state no more than a CPU tensor can meet a
  CUDA one (and no value can be read from it). Each scenario must run and give the same
  numbers bit for bit. A tensor that is meant to stay on the host names ``device="cpu"``.
- **on an accelerator** (CUDA), when the machine has one: each scenario there against
  the CPU, its outputs on the device. ``benchmarks/device_check.sh`` runs this file on a
  GPU machine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

import neuralode as no
import neuralode.compat as tdq
from fields import van_der_pol
from neuralode.nn import CNF, ExactTrace, MLPDynamics, ODEBlock, flow_snapshots

D = torch.float64
Outputs = dict[str, torch.Tensor]
Scenario = Callable[[str], Outputs]

# The factories whose result's device comes from a ``device=`` argument (default: CPU).
_FACTORIES = (
    "tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "logspace",
    "eye", "scalar_tensor", "empty_strided", "rand", "randn", "randint", "randperm",
)  # fmt: skip


def _placed_elsewhere(factory: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def call(*args: object, **kwargs: object) -> torch.Tensor:
        out = factory(*args, **kwargs)
        # tensor/as_tensor of a tensor keep that tensor's device: not a new placement.
        if kwargs.get("device") is not None or (args and isinstance(args[0], torch.Tensor)):
            return out
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("neuralode") and out.dim() > 0:
            return out.to("meta")
        return out

    return call


@contextmanager
def default_device_elsewhere() -> Iterator[None]:
    """Put neuralode's device-less tensors (of 1 or more dimensions) on ``meta``.

    The factories are replaced in the ``torch`` module itself rather than intercepted by a
    ``TorchFunctionMode``, which autograd does not carry into backward passes: the
    adjoints' backward solves are checked too.
    """
    originals = {name: getattr(torch, name) for name in _FACTORIES}
    for name, factory in originals.items():
        setattr(torch, name, _placed_elsewhere(factory))
    try:
        yield
    finally:
        for name, factory in originals.items():
            setattr(torch, name, factory)


# --------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------


def _vdp(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return van_der_pol(t, y, 1.0)


def _vdp_parts(t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    x, v = y
    return v, (1 - x**2) * v - x


def _fall(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[..., 1], torch.full_like(y[..., 0], -9.81)], -1)


def _floor(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y[..., 0]


def _bounce(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[..., 0], -0.8 * y[..., 1]], -1)


class _Field(torch.nn.Module):
    """A small MLP field ``f(t, y)``, float64, the same weights on every device."""

    def __init__(self, dim: int = 2, hidden: int = 16):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(hidden, dim, generator=gen, dtype=D) / dim**0.5)
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(hidden, generator=gen, dtype=D))
        self.w2 = torch.nn.Parameter(torch.randn(dim, hidden, generator=gen, dtype=D) / hidden**0.5)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = t.unsqueeze(-1) if t.dim() else t  # per-sample mode: one time per row
        return torch.tanh(y @ self.w1.T + self.b1 + t) @ self.w2.T


class _Parts(torch.nn.Module):
    """Van der Pol on a tuple state ``(x, v)``, as a module (compat's adjoint takes one)."""

    def forward(self, t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]):
        return _vdp_parts(t, y)


def _y0(device: str) -> torch.Tensor:
    return torch.tensor([[2.0, 0.0], [1.0, 0.5], [-0.5, 1.0]], dtype=D, device=device)


def _ts(device: str, t1: float = 2.0, n: int = 5) -> torch.Tensor:
    return torch.linspace(0.0, t1, n, dtype=D, device=device)


TIGHT = no.PIDController(rtol=1e-9, atol=1e-11)


def _grads(device: str, adjoint: no.AbstractAdjoint, batch_dims: int, **options: object) -> Outputs:
    field = _Field().to(device)
    y0 = _y0(device).requires_grad_()
    sol = no.solve(field, y0, _ts(device), adjoint=adjoint, batch_dims=batch_dims,
                   controller=TIGHT, **options)  # fmt: skip
    (sol.ys**2).sum().backward()
    return {"ys": sol.ys, "dy0": y0.grad, **{n: p.grad for n, p in field.named_parameters()}}


# --------------------------------------------------------------------------------------
# Scenarios: each returns its outputs, which must be on ``device``
# --------------------------------------------------------------------------------------


def joint_dense(device: str) -> Outputs:
    sol = no.solve(_vdp, _y0(device), _ts(device), controller=TIGHT, dense=True)
    assert sol.dense is not None
    return {"ys": sol.ys, "mid": sol.dense(torch.tensor(0.7, dtype=D, device=device))}


def joint_tuple_state(device: str) -> Outputs:
    y0 = _y0(device)
    sol = no.solve(_vdp_parts, (y0[:, 0], y0[:, 1]), _ts(device), controller=TIGHT)
    return {"x": sol.ys[0], "v": sol.ys[1]}


def per_sample_args_and_times(device: str) -> Outputs:
    mu = torch.tensor([0.5, 2.0, 5.0], dtype=D, device=device)
    ts = torch.stack([_ts(device, t1) for t1 in (1.0, 2.0, 3.0)])
    sol = no.solve(van_der_pol, _y0(device), ts, controller=TIGHT, batch_dims=1, args=mu)
    return {"ys": sol.ys}


def per_sample_sync_every(device: str) -> Outputs:
    sol = no.solve(_vdp, _y0(device), _ts(device), controller=TIGHT, batch_dims=1,
                   tuning=no.PerSampleTuning(sync_every=4))  # fmt: skip
    return {"ys": sol.ys}


def joint_sync_every(device: str) -> Outputs:
    sol = no.solve(_vdp, _y0(device), _ts(device), controller=TIGHT,
                   tuning=no.PerSampleTuning(sync_every=4))  # fmt: skip
    return {"ys": sol.ys}


def stops_and_jumps(device: str) -> Outputs:
    def kicked(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _vdp(t, y) + (t > 1.0).to(y.dtype)

    controller = no.PIDController(rtol=1e-9, atol=1e-11, step_ts=(0.3,), jump_ts=(1.0,))
    return {"ys": no.solve(kicked, _y0(device), _ts(device), controller=controller).ys}


def failure_keeps_what_was_reached(device: str) -> Outputs:
    joint = no.solve(_vdp, _y0(device), _ts(device), max_steps=3, throw=False)
    rows = no.solve(_vdp, _y0(device), _ts(device), max_steps=3, throw=False, batch_dims=1)
    return {"joint": joint.ys, "rows": rows.ys}


def events(device: str) -> Outputs:
    y0 = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=D, device=device)
    ts = _ts(device, 2.0, 4)
    bounce = no.Event(_floor, direction=-1, terminal=False, jump=_bounce)
    stop = no.Event(_floor, direction=-1)
    out: Outputs = {}
    with torch.no_grad():
        joint = no.solve(_fall, y0[0], ts, event=bounce, controller=TIGHT)
        rows = no.solve(_fall, y0, ts, event=(bounce,), controller=TIGHT, batch_dims=1)
    out.update(joint=joint.ys, joint_t=joint.event_ts, rows=rows.ys, rows_t=rows.event_ts)
    # With autograd on, a second pass differentiates through the event times.
    for name, batch_dims, y in (("joint", 0, y0[0]), ("rows", 1, y0)):
        y = y.clone().requires_grad_()
        sol = no.solve(_fall, y, ts, event=stop, controller=TIGHT, batch_dims=batch_dims)
        (sol.event_ts.sum() + sol.ys.nan_to_num().sum()).backward()
        out[f"{name}_stop_t"], out[f"{name}_dy0"] = sol.event_ts, y.grad
    return out


def _both_modes(f, y0, ts, solvers, controller) -> Outputs:
    """Each solver's joint and per-sample outputs."""
    out = {}
    for solver in solvers:
        for mode, batch_dims in (("joint", 0), ("rows", 1)):
            sol = no.solve(f, y0, ts, solver=solver, controller=controller, batch_dims=batch_dims)
            out[f"{type(solver).__name__}_{mode}"] = sol.ys
    return out


def implicit_solvers(device: str) -> Outputs:
    stiff = no.PIDController(rtol=1e-7, atol=1e-9)

    def vdp_stiff(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return van_der_pol(t, y, 50.0)

    solvers = (no.Kvaerno5(), no.Rodas5P(), no.Radau5())
    return _both_modes(vdp_stiff, _y0(device), _ts(device, 1.0, 3), solvers, stiff)


def explicit_solvers(device: str) -> Outputs:
    y0, ts = _y0(device), _ts(device)
    out = _both_modes(_vdp, y0, ts, (no.Tsit5(), no.Dopri8(), no.Bosh3()), TIGHT)
    out["rk4"] = no.solve(_vdp, y0, ts, solver=no.RK4(), controller=no.ConstantStepSize(0.01)).ys
    return out


def adams(device: str) -> Outputs:
    sol = no.solve(_vdp, _y0(device), _ts(device), solver=no.AdamsBashforthMoulton(),
                   controller=no.ConstantStepSize(0.01))  # fmt: skip
    return {"ys": sol.ys}


ADJOINTS = {
    "direct": no.DirectAdjoint(),
    "backsolve": no.BacksolveAdjoint(),
    "seminorm": no.BacksolveAdjoint(seminorm=True),
    "interpolated": no.BacksolveAdjoint(interpolate=True),
    "checkpoint": no.CheckpointAdjoint(),
}


def _all_gradients(device: str, batch_dims: int) -> Outputs:
    out = {}
    for label, adjoint in ADJOINTS.items():
        if batch_dims and label in ("seminorm", "interpolated"):
            continue  # (joint-mode options)
        for key, value in _grads(device, adjoint, batch_dims).items():
            out[f"{label}_{key}"] = value
    return out


def gradients_joint(device: str) -> Outputs:
    return _all_gradients(device, 0)


def gradients_per_sample(device: str) -> Outputs:
    return _all_gradients(device, 1)


def regularizers(device: str) -> Outputs:
    field = _Field().to(device)
    y0 = _y0(device)
    regs = (no.KineticEnergy(), no.JacobianFrobenius(estimator="exact"))
    sol = no.solve(field, y0, _ts(device), controller=TIGHT, regularizers=regs)
    loss = sol.ys.square().sum() + sum(sol.regularization.values())
    loss.backward()
    return {"ys": sol.ys, **sol.regularization, "dw1": field.w1.grad}


def models(device: str) -> Outputs:
    torch.manual_seed(0)
    cnf = CNF(MLPDynamics(2, (8,)).double(), trace=ExactTrace(), controller=TIGHT).to(device)
    x = _y0(device)
    log_p = cnf.log_prob(x)
    log_p.sum().backward()
    block = ODEBlock(_Field(dim=3).to(device), controller=TIGHT, augment_dim=1)
    h = block(x)
    h.sum().backward()
    snaps = flow_snapshots(cnf, n_samples=5, resolution=4, fractions=(0.0, 1.0),
                           generator=torch.Generator(device).manual_seed(0))  # fmt: skip
    return {"log_p": log_p, "cnf_grad": next(cnf.parameters()).grad, "block": h,
            "snapshot_density": snaps.log_density}  # fmt: skip


def compat(device: str) -> Outputs:
    y0, t = _y0(device), _ts(device)
    out = {
        "dopri5": tdq.odeint(_vdp, y0, t, rtol=1e-9, atol=1e-11),
        "rk4": tdq.odeint(_vdp, y0, t, method="rk4", options={"step_size": 0.1}),
        "scipy": tdq.odeint(
            _vdp, y0, t, method="scipy_solver", rtol=1e-9, atol=1e-11, options={"solver": "DOP853"}
        ),
    }
    field = _Field().to(device)
    y = y0.clone().requires_grad_()
    ys = tdq.odeint_adjoint(field, y, t, rtol=1e-9, atol=1e-11)
    ys.square().sum().backward()
    out.update(adjoint=ys, adjoint_dy0=y.grad)
    # A tuple state with one tolerance per part (RNODE's layout), through the adjoint.
    x, v = y0[:, 0].clone().requires_grad_(), y0[:, 1].clone()
    xs, vs = tdq.odeint_adjoint(_Parts().to(device), (x, v), t, rtol=[1e-9, 1e-7],
                                atol=[1e-11, 1e-9], adjoint_params=())  # fmt: skip
    (xs.square().sum() + vs.sum()).backward()
    out.update(parts_x=xs, parts_v=vs, parts_dx0=x.grad)
    y = torch.tensor([1.0, 0.0], dtype=D, device=device).requires_grad_()
    t0 = torch.tensor(0.0, dtype=D, device=device)
    event_t, states = tdq.odeint_event(_fall, y, t0, event_fn=_floor, rtol=1e-9, atol=1e-11)
    event_t.backward()
    out.update(event_t=event_t, event_states=states, event_dy0=y.grad)
    return out


SCENARIOS: list[Scenario] = [
    joint_dense, joint_tuple_state, per_sample_args_and_times, per_sample_sync_every,
    joint_sync_every, stops_and_jumps, failure_keeps_what_was_reached, events,
    explicit_solvers, implicit_solvers, adams, gradients_joint, gradients_per_sample,
    regularizers, models, compat,
]  # fmt: skip


def _on(outputs: Outputs, device: str) -> None:
    for name, value in outputs.items():
        assert isinstance(value, torch.Tensor), f"{name}: {type(value).__name__}"
        assert value.device.type == torch.device(device).type, f"{name} is on {value.device}"


# --------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------


def test_the_simulation_catches_a_tensor_left_on_the_default_device():
    # The check itself: a tensor made without device= in a neuralode module, meeting the
    # state, fails under the simulation and only there.
    namespace = {"torch": torch, "__name__": "neuralode._planted"}
    exec(compile("def add_ones(x):\n    return x + torch.ones(x.shape)\n", "<planted>", "exec"),
         namespace)  # fmt: skip
    add_ones = namespace["add_ones"]
    with default_device_elsewhere(), pytest.raises(RuntimeError, match="device"):
        add_ones(torch.zeros(3))
    assert torch.equal(add_ones(torch.zeros(3)), torch.ones(3))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_no_tensor_is_left_on_the_default_device(scenario):
    expected = scenario("cpu")
    with default_device_elsewhere():
        got = scenario("cpu")
    _on(got, "cpu")
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")  # fmt: skip


ACCELERATORS = ["cuda"] if torch.cuda.is_available() else []


@pytest.mark.skipif(not ACCELERATORS, reason="no CUDA device on this machine")
@pytest.mark.parametrize("device", ACCELERATORS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario_on_the_accelerator_matches_the_cpu(scenario, device):
    expected = scenario("cpu")
    got = scenario(device)
    _on(got, device)
    for name in expected:
        # Rounding differs between devices (reductions, fused kernels, LU): the solutions
        # may take different steps, and agree to about their global error (the stiff
        # scenario's tolerance is 1e-7).
        torch.testing.assert_close(
            got[name].cpu(), expected[name], rtol=1e-5, atol=1e-6, equal_nan=True,
            msg=lambda m, name=name: f"{name}: {m}",
        )  # fmt: skip


@pytest.mark.skipif(not ACCELERATORS, reason="no CUDA device on this machine")
@pytest.mark.parametrize("batch_dims", [0, 1])
def test_compiled_steps_on_the_accelerator_match_eager(batch_dims):
    y0, ts = _y0("cuda"), _ts("cuda")
    eager = no.solve(_vdp, y0, ts, controller=TIGHT, batch_dims=batch_dims)
    compiled = no.solve(_vdp, y0, ts, controller=TIGHT, batch_dims=batch_dims, compile_step=True)
    assert compiled.ys.device.type == "cuda"
    # (Fused kernels round differently: a step decision may flip at the tolerance.)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-7, atol=1e-8)
