# Every target that runs something first does the complete set-up on a fresh machine.
# torch is installed first and pinned, so that no CUDA wheels are pulled in by a range.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup data browser demo test test-slow lint typecheck format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST from the Debian package where apt is available (as root, or with passwordless
# sudo). Never fatal: without it the experiments fall back to scikit-learn's digits and their
# report says so.
FMNIST := /usr/share/datasets/fashion-mnist
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  if { $$SUDO apt-get install -y -q dataset-fashion-mnist || \
	       { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; }; \
	     } >/dev/null 2>&1; then echo "Fashion-MNIST installed in $(FMNIST)"; \
	  else echo "could not install dataset-fashion-mnist: scikit-learn's digits will be used"; fi; \
	else echo "no apt-get: scikit-learn's digits will be used"; fi

# Debian's chromium, for the test that renders REPORT.html headless (skipped without it). As
# quiet and as never-fatal as `data`: the rest of the suite does not need it.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  if { $$SUDO apt-get install -y -q chromium || \
	       { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; \
	     } >/dev/null 2>&1; then echo "chromium installed"; \
	  else echo "could not install chromium: the headless report test will be skipped"; fi; \
	else echo "no apt-get: the headless report test will be skipped"; fi

# The paper's experiments at the demo scale (about 5 minutes on 2 quiet cores, two single-threaded
# runs at a time): REPORT.md and the self-contained REPORT.html in runs/demo.
# Re-running reuses finished runs and resumes interrupted ones.
demo: $(STAMP) data
	$(PY) -m neuralode reproduce --preset demo --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/ruff check src tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks examples
	$(VENV)/bin/ruff check --fix src tests benchmarks examples

bench: $(STAMP)
	bash benchmarks/install_peers.sh $(PY)
	$(PY) benchmarks/bench_forward.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
