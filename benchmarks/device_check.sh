#!/usr/bin/env bash
# The checks that need a GPU, as one command for a machine with CUDA and a PyTorch of its own
# (and no internet): correctness on the device, then the forward benchmark there.
#
#   bash benchmarks/device_check.sh [OUT_DIR]        (default: $OUT, else ./device_out)
#
# 1. tests/core/test_devices.py on CUDA: every scenario (joint and per-sample solves, events,
#    implicit and Adams solvers, every gradient method, regularisers, CNF and ODEBlock,
#    compat) on the device against the CPU, and compiled steps against eager ones.
# 2. benchmarks/bench_forward.py --device cuda --quick --sync-every 8: neuralode against the
#    peers on the same card, the host-read-every-8-steps column included.
#
# neuralode runs from src/ (no install). The peers the machine lacks (torchode, torchdyn) can
# travel as wheels in .whl/, made on a machine with pip access (the GPU machine's Python is 3.12):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       torchode==1.0.1 torchtyping==0.1.5 typeguard==4.6.1 torchdyn==1.0.6 torchcde==0.2.5 \
#       torchsde==0.2.6 trampoline==0.1.2
# (all pure Python, about 250 KB; the machine has their other imports: sympy, attrs, scipy);
# the script installs them into a folder of its own, never over torch.
# Each step has its own time limit, so that one hang cannot take the whole lease.
set -uo pipefail

OUT_DIR="${1:-${OUT:-device_out}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/peers .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/peers"
fi

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git rev-parse --short HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
              torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA")'
} 2>&1 | tee "$OUT_DIR/device.txt"

status=0
timeout 300 "$PY" -m pytest tests/core/test_devices.py -q -p no:cacheprovider -o addopts="-ra" \
    2>&1 | tee "$OUT_DIR/tests.log" || status=1
timeout 420 "$PY" benchmarks/bench_forward.py --device cuda --quick --sync-every 8 \
    --out "$OUT_DIR/forward_cuda.md" 2>&1 | tail -60 || status=1
exit $status
