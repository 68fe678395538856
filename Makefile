# ldmcli developer targets. `make install` then `make test` is the whole set-up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-all bench weights eval clean

# CPU torch first (a local wheel where there is one), then ldmcli with the dev extras, then open_clip_torch
# without its torchvision requirement (which would pull a CUDA torch): we only read its BPE vocabulary; the
# test oracles k-diffusion and peft likewise.
install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "open_clip_torch>=2.20" "k-diffusion>=0.1.1" "peft>=0.13" "accelerate>=0.26"
	@echo "first image, from the embedded default txt2img model:"
	$(BIN)/ldm txt2img "a red circle" -o outputs/first-run.png

# `make test` skips the tests marked slow or gpu (pyproject's addopts); `make test-all` runs every test.
test:
	$(BIN)/python -m pytest

test-all:
	$(BIN)/python -m pytest -m ""

bench:
	$(BIN)/python -m benchmarks.bench

# The embedded defaults: the cpu recipe from seed 0 (about 2¼ hours on two cores), then installed into weights/.
weights:
	$(BIN)/ldm train --recipe cpu --seed 0 --out runs/default
	$(BIN)/python -m ldmcli.train.install runs/default weights

eval:
	$(BIN)/ldm eval

clean:
	rm -rf build dist *.egg-info .pytest_cache
