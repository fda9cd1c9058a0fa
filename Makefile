# Set-up is part of every target: a fresh machine needs only python3, pip and apt-get.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test data clean

demo: $(STAMP) data  ## the main job: the shipped model at half its measured latency (measured candidates raced against NViT alone and token methods alone → fine-tune → checked ONNX → measured)
	$(BIN)/vitdeploy optimize fmnist_vit --budget-ratio 0.5 --finetune-steps 200 --out out/demo

test: $(STAMP) data  ## the test suite (CPU only; GPU tests skip)
	$(BIN)/python -m pytest -q

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the local CPU wheel; keeps pip from pulling a CUDA build
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get install -y -q dataset-fashion-mnist || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist)

clean:
	rm -rf $(VENV) out
