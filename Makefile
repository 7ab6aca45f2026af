# The two commands; each needs only Python 3.11+ (and make).
#   make run   the whole stack on this machine (Ctrl-C stops all of it)
#   make test  the test suite against real PostgreSQL, Redis and S3

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip install --disable-pip-version-check --quiet
PYTEST_ARGS ?=

.PHONY: run test stop

run: $(VENV)/.installed-dev
	$(VENV_PYTHON) -m devstack run

test: $(VENV)/.installed-test
	$(VENV_PYTHON) -m pytest -n 2 $(PYTEST_ARGS)

# Stops backing services a killed `make run` left behind (by their pid files).
stop:
	$(VENV_PYTHON) -m devstack stop

$(VENV_PYTHON):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Sealdrop needs Python 3.11 or newer as $(PYTHON) (make PYTHON=python3.12 ...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# The stamps are newer than the requirements they installed: pip runs only when those change.
$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(VENV_PYTHON)
	$(PIP) -r requirements-dev.txt
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-dev.txt requirements-test.txt | $(VENV_PYTHON)
	$(PIP) -r requirements-test.txt
	touch $@
