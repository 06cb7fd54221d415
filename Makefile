# Two commands work on a fresh machine: `make speedrun` and `make test`.
# Both create .venv on first use: torch first (the CPU wheel on this machine), then genforge[dev]
# (every extra: serve, eval, report, data, plus the test tools and import-linter) under
# constraints.txt so nothing can pull a multi-GB CUDA build. Re-runs skip the install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# garak (the red-team scanner the safety tests run against `genforge serve`) pins transformers and openai below
# genforge's, so it gets a venv of its own; it talks to the server over HTTP only.
GARAK_VENV := .venv-garak
GARAK_STAMP := $(GARAK_VENV)/.installed-stamp
SIZE ?= tiny
PYTEST_ARGS ?=

.PHONY: install speedrun smoke test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# pytorch-fid's own torchvision requirement resolves to a CUDA build; genforge uses only its Frechet distance
	$(PY) -m pip install -q -c constraints.txt --no-deps 'pytorch-fid>=0.3'
	@touch $(STAMP)

$(GARAK_STAMP): constraints.txt
	@test -x $(GARAK_VENV)/bin/python || $(PYTHON) -m venv $(GARAK_VENV)
	$(GARAK_VENV)/bin/python -m pip install -q --upgrade pip
	$(GARAK_VENV)/bin/python -m pip install -q torch==2.13.0
	$(GARAK_VENV)/bin/python -m pip install -q -c constraints.txt 'garak>=0.10'
	@touch $(GARAK_STAMP)

install: $(STAMP)

speedrun: $(STAMP) $(GARAK_STAMP)
	GENFORGE_GARAK_PYTHON=$(CURDIR)/$(GARAK_VENV)/bin/python $(VENV)/bin/genforge speedrun size=$(SIZE)

smoke: $(STAMP)
	$(VENV)/bin/genforge speedrun size=smoke

# the layer contracts in pyproject.toml ([tool.importlinter]) first: a broken layer fails fast
test: $(STAMP) $(GARAK_STAMP)
	$(VENV)/bin/lint-imports
	GENFORGE_GARAK_PYTHON=$(CURDIR)/$(GARAK_VENV)/bin/python $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check genforge tests benchmarks
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/decode.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
