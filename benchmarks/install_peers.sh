#!/usr/bin/env bash
# Install the peer ODE libraries that the benchmarks compare against, into the environment of the
# interpreter given as $1 (default: .venv/bin/python), without ever changing its torch.
#
# Every package goes in with --no-deps: the peers declare loose `torch>=...` requirements, and a
# resolver run would happily "upgrade" the CPU torch we benchmark against (or pull CUDA wheels).
# Instead the few packages each peer's *import* really needs are pinned here by hand.
# Idempotent: pip skips requirements that are already satisfied at the pinned version.
set -euo pipefail

PY="${1:-.venv/bin/python}"

torch_version() { "$PY" -c 'import torch; print(torch.__version__)'; }
TORCH_BEFORE="$(torch_version)"

pip_nodeps() { "$PY" -m pip install --quiet --no-deps "$@"; }

# torchdiffeq: needs only torch and scipy (scipy is already a test dependency).
pip_nodeps "torchdiffeq==0.2.5"

# torchode: sympy ~= 1.10 and torchtyping ~= 0.1.4. torchtyping declares typeguard < 3 but only
# needs it for its optional runtime checks; the CLI extra (tyro) needs typeguard >= 4, so it is
# left as it is (torchode imports and solves fine with typeguard 4).
pip_nodeps "torchode==1.0.1" "torchtyping==0.1.5" "sympy>=1.10,<2"

# torchdyn: its declared deps (lightning, ipywidgets, torchvision, scikit-learn, poethepoet, ...)
# are mostly for notebooks. torchdyn.numerics needs attrs and torchcde (-> torchsde ->
# trampoline); torchdyn.core additionally imports pytorch_lightning (-> torchmetrics,
# lightning-utilities; its fsspec[http] extra is not needed to import it).
pip_nodeps "torchdyn==1.0.6" "attrs==26.1.0" "torchcde==0.2.5" "torchsde==0.2.6" "trampoline==0.1.2"
pip_nodeps "pytorch-lightning==2.6.6" "torchmetrics==1.9.0" "lightning-utilities==0.15.3"

TORCH_AFTER="$(torch_version)"
if [[ "$TORCH_AFTER" != "$TORCH_BEFORE" ]]; then
    echo "install_peers.sh: torch changed from $TORCH_BEFORE to $TORCH_AFTER" >&2
    exit 1
fi

# Import exactly what the benchmarks use, so a broken peer fails here and not mid-benchmark.
"$PY" - <<'EOF'
import torchdiffeq
import torchode
from torchdyn.core import NeuralODE  # noqa: F401
from torchdyn.numerics import odeint  # noqa: F401

print(f"peers ok: torchdiffeq {torchdiffeq.__version__}, torchode {torchode.__version__}, "
      "torchdyn 1.0.6")
EOF
echo "torch $TORCH_AFTER (unchanged)"
