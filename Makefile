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

# The embedded defaults: the cpu recipe from seed 0, one stage per command (8 to 67 minutes each on two cores;
# the figures are in docs/RESULTS.md), then installed into weights/. Every stage is resumable: `make weights` again
# after an interruption continues where it stopped and skips what is done. After a change of the recipe file it
# resumes every stage: a finished stage the change leaves alone returns at once, one it extends (more steps, a
# tail) continues, and one whose finished steps it would change stops with a line saying what differs.
STAGES := autoencoder decoder txt2img layout2img semantic2img photo-autoencoder superres inpaint superres-decoder
weights: $(addprefix runs/default/.done-,$(STAGES))
	$(BIN)/python -m ldmcli.train.install runs/default weights

runs/default/.done-decoder: runs/default/.done-autoencoder
$(addprefix runs/default/.done-,txt2img layout2img semantic2img): runs/default/.done-decoder
$(addprefix runs/default/.done-,superres inpaint): runs/default/.done-photo-autoencoder
runs/default/.done-superres-decoder: runs/default/.done-superres
runs/default/.done-%: ldmcli/train/recipes.py
	$(BIN)/ldm train --recipe cpu --seed 0 --task $* --out runs/default $(if $(wildcard runs/default/$*/state.pt),--resume)
	touch $@

eval:
	$(BIN)/ldm eval

clean:
	rm -rf build dist *.egg-info .pytest_cache
