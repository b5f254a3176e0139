# Two entry points for a fresh clone (see README.md):
#   make demo   builds .venv, converts the bundled MNIST sample, trains LeNet, tests it
#   make test   builds .venv with the test extras and runs the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint proto bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	bash tools/demo.sh

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check netforge tests tools

proto: $(VENV)/.installed
	$(BIN)/python tools/regenerate_proto.py
