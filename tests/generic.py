"""The lists that drive the generic tests: every solver and every gradient method.

A new solver joins ``neuralode.ALL_SOLVERS``, a new gradient method joins
:data:`ALL_ADJOINTS`, and every generic test (convergence orders, interpolation,
gradcheck, second derivatives, per-sample gradients...) picks it up.
"""

from __future__ import annotations

import neuralode as no

ALL_SOLVERS = no.ALL_SOLVERS

ALL_ADJOINTS: dict[str, no.AbstractAdjoint] = {
    "direct": no.DirectAdjoint(),
    "backsolve": no.BacksolveAdjoint(),
    "backsolve_seminorm": no.BacksolveAdjoint(seminorm=True),
    "checkpoint": no.CheckpointAdjoint(),
}
# One of each method: the per-sample backsolve integrates the parameters outside error
# control already (a seminorm by construction), so its seminorm variant adds nothing.
EACH_ADJOINT = {name: a for name, a in ALL_ADJOINTS.items() if name != "backsolve_seminorm"}
