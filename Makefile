# Quickstart: `make repro` then `make test`. Everything runs inside .venv with the pinned requirements.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install repro test test-fast lint bench clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

repro: install
	dvc repro

test: install  # two workers: the tests of a module, and those of the shared pipeline, each stay on one (conftest.py)
	ruff check src stages tests bench
	pytest -n 2 --dist loadgroup

test-fast: install  # the quick loop: every test not marked slow (no dvc pipeline runs, no multi-process training)
	ruff check src stages tests bench
	pytest -m "not slow" -n auto

lint: install
	ruff check src stages tests bench
