VENV ?= .venv
PYTHON ?= python3

.PHONY: run test

# Set-up is part of both targets: a virtual environment at .venv with csr and its dev extras.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

# The main job: CSR on the miniature world (built on first use), end to end.
run: $(VENV)/.installed
	$(VENV)/bin/csr run $(ARGS)

# The test suite (slow tests need --run-slow: make test ARGS=--run-slow).
test: $(VENV)/.installed
	$(VENV)/bin/pytest -q $(ARGS)
