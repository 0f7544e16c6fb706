# torchmaml: `make demo` runs the main job, `make test` runs the tests. Both create/refresh .venv first:
# the demo installs only what it needs (torchmaml and matplotlib), the tests add the test extras.
# CUDA users: make TORCH_SPEC='torch==2.13.0' PIP_EXTRA='--index-url https://download.pytorch.org/whl/cu128' ...
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.torchmaml-installed
DEMO_STAMP := $(VENV)/.torchmaml-demo-installed
DEMO_DIR ?= runs/demo

.PHONY: venv demo test lint bench clean

$(DEMO_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/torchmaml train --config sinusoid-demo --out $(DEMO_DIR) --overwrite
	$(BIN)/torchmaml evaluate $(DEMO_DIR)
	@echo "Plots: $(DEMO_DIR)/adaptation.png (the paper's Figure 2) and $(DEMO_DIR)/learning_curve.png"

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache

# The theory lab (experiments/theory_lab, research code outside the package): regenerates docs/theory.md and the
# figures and numbers in docs/theory/; the page states how long it took.
.PHONY: theory
theory: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m experiments.theory_lab report --out docs
