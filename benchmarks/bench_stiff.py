"""Stiff benchmark: Kvaerno3/5, Rosenbrock23, ROS3P, Rodas5P against scipy's stiff solvers.

Problems from the Bari "Test Set for IVP Solvers" with its reference values: VDPOL (Van
der Pol, mu = 1000, y0 = (2, 0), t = 2000) and ROBER (Robertson, t = 1e11). For each
tolerance: the largest relative error at the end time, function evaluations, Jacobian
evaluations, LU factorisations and wall time. scipy gets the analytic Jacobian (its
evaluations are not in nfev); neuralode takes it by autograd, one per attempted step
(counted in nfe as one evaluation of f, plus n reverse-mode products). Dopri5 is run on
VDPOL's first 20 time units only (the whole interval takes millions of evaluations),
against Kvaerno5 on the same 20 units. Then a per-sample batch of ROBER systems with
log-uniform rate constants in one call, against one system alone. Last, a 1-D
reaction-diffusion system of n components (stiff in both terms) with Kvaerno5's dense
Newton (Jacobian + LU) against its matrix-free one (JVPs + GMRES).

float64, one torch thread. Usage: python benchmarks/bench_stiff.py [--batch B] [--pde-n N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

import neuralode as no

MU = 1000.0
VDPOL = (np.array([2.0, 0.0]), 2000.0, np.array([0.1706167732170483e01, -0.8928097010247975e-03]))
ROBER = (
    np.array([1.0, 0.0, 0.0]),
    1e11,
    np.array([0.2083340149701255e-07, 0.8333360770334713e-13, 0.9999999791665050]),
)
RATES = (0.04, 1e4, 3e7)


def vdp_torch(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, MU * (1 - x * x) * v - x], dim=-1)


def vdp_np(t: float, y: np.ndarray) -> list[float]:
    return [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]]


def vdp_jac(t: float, y: np.ndarray) -> list[list[float]]:
    return [[0.0, 1.0], [-2 * MU * y[0] * y[1] - 1, MU * (1 - y[0] ** 2)]]


def rober_torch(t: torch.Tensor, y: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    k1, k2, k3 = (k[:, 0], k[:, 1], k[:, 2]) if k is not None else RATES
    slow = -k1 * y[..., 0] + k2 * y[..., 1] * y[..., 2]
    fast = k3 * y[..., 1] ** 2
    return torch.stack([slow, -slow - fast, fast], dim=-1)


def rober_np(t: float, y: np.ndarray) -> list[float]:
    k1, k2, k3 = RATES
    return [
        -k1 * y[0] + k2 * y[1] * y[2],
        k1 * y[0] - k2 * y[1] * y[2] - k3 * y[1] ** 2,
        k3 * y[1] ** 2,
    ]


def rober_jac(t: float, y: np.ndarray) -> list[list[float]]:
    k1, k2, k3 = RATES
    return [
        [-k1, k2 * y[2], k2 * y[1]],
        [k1, -k2 * y[2] - 2 * k3 * y[1], -k2 * y[1]],
        [0.0, 2 * k3 * y[1], 0.0],
    ]


def row(name: str, err: float, nfe: int, njev: int, nlu: int, wall: float) -> str:
    return f"| {name} | {err:.1e} | {nfe} | {njev} | {nlu} | {wall:.2f} |"


def scipy_rows(fun: Callable, jac: Callable, problem: tuple, rtol: float, atol: float) -> list:
    y0, t_end, ref = problem
    out = []
    for method in ("Radau", "BDF", "LSODA"):
        start = time.perf_counter()
        res = solve_ivp(fun, (0, t_end), y0, method=method, rtol=rtol, atol=atol, jac=jac)
        wall = time.perf_counter() - start
        err = float(np.max(np.abs((res.y[:, -1] - ref) / ref)))
        out.append(row(f"scipy {method}", err, res.nfev, res.njev, res.nlu, wall))
    return out


def ours(
    f: Callable, problem: tuple, solver: no.AbstractSolver, rtol: float, atol: float
) -> tuple[no.Solution, float]:
    y0, t_end, _ = problem
    ts = torch.tensor([0.0, t_end], dtype=torch.float64)
    start = time.perf_counter()
    with torch.no_grad():
        sol = no.solve(
            f, torch.tensor(y0, dtype=torch.float64), ts, solver=solver,
            controller=no.PIDController(rtol=rtol, atol=atol), max_steps=10**7,
        )  # fmt: skip
    return sol, time.perf_counter() - start


def our_rows(f: Callable, problem: tuple, rtol: float, atol: float) -> list[str]:
    out = []
    newton = no.Newton(rtol=rtol, atol=atol)
    for solver in (
        no.Kvaerno3(newton=newton),
        no.Kvaerno5(newton=newton),
        no.Radau5(newton=newton),
        no.Rosenbrock23(),
        no.ROS3P(),
        no.Rodas5P(),
    ):
        sol, wall = ours(f, problem, solver, rtol, atol)
        err = float(np.max(np.abs((sol.ys[-1].numpy() - problem[2]) / problem[2])))
        stats = sol.stats
        name = f"neuralode {type(solver).__name__}"
        out.append(row(name, err, stats.nfe, stats.njev, stats.nlu, wall))
    return out


def stiff_table() -> None:
    header = (
        "| solver | max rel. error | nfe | Jacobians | LU | wall s |\n|---|---|---|---|---|---|"
    )
    cases = (
        ("VDPOL (mu = 1000, t = 2000)", vdp_torch, vdp_np, vdp_jac, VDPOL, 1.0),
        ("ROBER (t = 1e11)", rober_torch, rober_np, rober_jac, ROBER, 1e-6),
    )
    for title, f, fun, jac, problem, atol_factor in cases:
        for rtol in (1e-4, 1e-7):
            atol = rtol * atol_factor
            print(f"\n### {title}, rtol = {rtol:g}, atol = {atol:g}\n\n{header}")
            for line in (
                *scipy_rows(fun, jac, problem, rtol, atol),
                *our_rows(f, problem, rtol, atol),
            ):
                print(line)


def explicit_against_implicit() -> None:
    y0, _, _ = VDPOL
    short = (y0, 20.0, np.ones(2))
    print("\n### VDPOL's first 20 time units, rtol = atol = 1e-6\n")
    for solver in (no.Dopri5(), no.Kvaerno5()):
        sol, wall = ours(vdp_torch, short, solver, 1e-6, 1e-6)
        name, stats = type(solver).__name__, sol.stats
        print(f"- {name}: {stats.nfe} evaluations, {stats.steps} steps, {wall:.2f} s")


def rober_batch(batch: int) -> None:
    g = torch.Generator().manual_seed(0)
    spread = 10 ** (torch.rand(batch, 3, generator=g, dtype=torch.float64) * 2 - 1)
    rates = spread * torch.tensor(RATES, dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(batch, 3)
    ts = torch.tensor([0.0, 1e3], dtype=torch.float64)
    rtol, atol = 1e-6, 1e-12
    solver = no.Kvaerno5(newton=no.Newton(rtol=rtol, atol=atol))
    controller = no.PIDController(rtol=rtol, atol=atol)

    def run(y: torch.Tensor, k: torch.Tensor) -> tuple[no.Solution, float]:
        start = time.perf_counter()
        with torch.no_grad():
            sol = no.solve(
                rober_torch, y, ts, solver=solver, controller=controller, batch_dims=1, args=k
            )
        return sol, time.perf_counter() - start

    one, wall_one = run(y0[:1], rates[:1])
    many, wall_many = run(y0, rates)
    worst = 0.0
    for i in range(0, batch, max(batch // 16, 1)):  # 16 samples against scipy's Radau
        k = rates[i].tolist()

        def fun(t: float, y: np.ndarray, k: list = k) -> list[float]:
            slow, fast = -k[0] * y[0] + k[1] * y[1] * y[2], k[2] * y[1] ** 2
            return [slow, -slow - fast, fast]

        ref = solve_ivp(fun, (0, 1e3), [1.0, 0.0, 0.0], method="Radau", rtol=1e-12, atol=1e-18)
        scaled = np.abs(many.ys[-1, i].numpy() - ref.y[:, -1]) / (
            atol + rtol * np.abs(ref.y[:, -1])
        )
        worst = max(worst, float(scaled.max()))
    label = "rate constants log-uniform in [0.1, 10] x the standard ones"
    print(f"\n### {batch} ROBER systems, {label}, t = 1000\n")
    print(f"- one system: {wall_one:.2f} s, {one.stats.steps} steps")
    print(f"- {batch} in one per-sample call: {wall_many:.2f} s ({wall_many / wall_one:.1f}x one), "
          f"{int(many.stats.sample_steps.max())} steps for the slowest sample")  # fmt: skip
    print(f"- worst error of 16 checked samples, in units of the tolerance: {worst:.2f}")


def matrix_free(n: int) -> None:
    # u_t = D u_xx − k (u − cos(t) sin(πx)), u = 0 at both ends: the reaction (k = 1e4)
    # dominates the spectrum, so I − hγJ is well conditioned and GMRES needs few
    # iterations without a preconditioner. Linear: the exact solution of the discretised
    # system by the sine transform, which diagonalises the second differences.
    k, diffusion, dx = 1e4, 1e-4, 1.0 / (n + 1)
    x = torch.linspace(dx, 1 - dx, n, dtype=torch.float64)
    g = torch.sin(torch.pi * x)

    def f(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(u, (1, 1))
        return diffusion * (padded[2:] - 2 * u + padded[:-2]) / dx**2 - k * (u - g * torch.cos(t))

    j = torch.arange(1, n + 1, dtype=torch.float64)
    modes = torch.sin(torch.pi * torch.outer(j, j) / (n + 1)) * (2 / (n + 1)) ** 0.5
    lam = -k - 4 * diffusion / dx**2 * torch.sin(j * torch.pi / (2 * (n + 1))) ** 2
    t1 = 1.0
    u_hat = k * (modes @ g) * (np.sin(t1) - lam * np.cos(t1) + lam * torch.exp(lam * t1))
    exact = modes @ (u_hat / (lam**2 + 1))
    rtol, atol = 1e-6, 1e-8
    print(f"\n### Reaction-diffusion, n = {n}, t = 1, rtol = {rtol:g}, atol = {atol:g}\n")
    print("| linear_solver | max error / tol | steps | nfe | njev | LU | solves | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for linear_solver in ("gmres", "lu"):
        solver = no.Kvaerno5(newton=no.Newton(rtol=rtol, atol=atol), linear_solver=linear_solver)
        start = time.perf_counter()
        with torch.no_grad():
            sol = no.solve(
                f, torch.zeros(n, dtype=torch.float64),
                torch.tensor([0.0, t1], dtype=torch.float64), solver=solver,
                controller=no.PIDController(rtol=rtol, atol=atol),
            )  # fmt: skip
        wall = time.perf_counter() - start
        err = float(((sol.ys[-1] - exact).abs() / (atol + rtol * exact.abs())).max())
        st = sol.stats
        print(f"| {linear_solver} | {err:.2f} | {st.steps} | {st.nfe} | {st.njev} | {st.nlu} | "
              f"{st.nsolve} | {wall:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--pde-n", type=int, default=2000, help="0 skips it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stiff_table()
    explicit_against_implicit()
    rober_batch(args.batch)
    if args.pde_n > 0:
        matrix_free(args.pde_n)


if __name__ == "__main__":
    main()
