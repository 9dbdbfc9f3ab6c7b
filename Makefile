# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv

.PHONY: setup demo test test-all lint clean-venv

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/lrl demo --out demo-out

test: setup
	$(VENV)/bin/python -m pytest -q

test-all: setup
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check lrl tests bench
