VENV ?= .venv
PYTHON ?= python3
# Pinned versions the suite last passed with; `make test-latest` installs the newest instead.
CONSTRAINTS ?= constraints.txt

.PHONY: run test test-latest

# Set-up is part of both targets: a virtual environment at .venv with csr and its dev extras.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $@

# The main job: CSR on the miniature world (built on first use), end to end.
run: $(VENV)/.installed
	$(VENV)/bin/csr run $(ARGS)

# The test suite (slow tests need --run-slow: make test ARGS=--run-slow).
test: $(VENV)/.installed
	$(VENV)/bin/pytest -q $(ARGS)

# The suite against the newest releases pyproject.toml allows, in a separate environment.
test-latest:
	$(MAKE) test VENV=.venv-latest CONSTRAINTS=
