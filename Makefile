# Two commands do all the set-up on a fresh machine: `make train` and `make test` (lint, then pytest).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install; override on a cluster, e.g. make TORCH="torch torchvision" install
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install train test test-quick lint format clean demo-readme

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,sweep,gpu]'
	touch $@

install: $(VENV)/.installed

train: install
	$(VENV)/bin/delving-train experiment=demo $(ARGS)

# Shell scripts (shebang files in .ci/ included) go through shellcheck, the Dockerfile through hadolint.
SHELL_SCRIPTS := $(wildcard scripts/*.sh scripts/*.sbatch .ci/*)

lint: install
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/lint-imports

# Reruns the demo (train, ten-view eval, ensemble) in a temporary folder and rewrites README.md's demo block.
demo-readme: install
	$(PY) scripts/demo_readme.py

# The suite runs on every core (pytest-xdist); tests that share a session-wide run are grouped onto one worker
# (xdist_group marks, --dist loadgroup), so each long real run is made once.
PYTEST := $(PY) -m pytest -q -n auto --dist loadgroup

test: lint
	$(PYTEST) $(ARGS)

# The edit loop: lint and the tests with no `slow` or `ddp` mark (679 of 852; about 90 s on 2 cores).
test-quick: lint
	$(PYTEST) -m "not slow and not ddp" $(ARGS)

format: install
	$(VENV)/bin/ruff check --fix src tests scripts
	$(VENV)/bin/ruff format src tests scripts

clean:
	rm -rf outputs multirun wandb .pytest_cache
