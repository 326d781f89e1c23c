# Two commands for a newcomer: `make demo` and `make test`. Both create (or reuse) .venv, install the
# pinned requirements, prepare the offline models, and are safe to run again.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED ?= 1

.PHONY: setup demo test test-all

$(VENV)/.installed: requirements.txt requirements-nodeps.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m training.models --prepare
	touch $@

setup: $(VENV)/.installed

# DPR on SciFact vs BM25 and zero-shot MiniLM (about 25 minutes on 2 CPU cores).
demo: setup
	$(PY) bench/scifact.py

# Fast CPU test suite (slow tests are marked and skipped; `make test-all` runs them too).
test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m "slow or not slow"
