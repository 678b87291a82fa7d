# msdmatch: `make demo` runs the whole cascade on the demo corpus; `make test` runs the tests.
VENV ?= .venv
OUT ?= demo_out

.PHONY: setup demo test test-slow test-faults bench

setup:
	@./scripts/setup.sh

demo: setup
	$(VENV)/bin/msdmatch demo $(OUT)

test: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow

bench: setup
	$(VENV)/bin/python benchmarks/featurize.py
	$(VENV)/bin/python benchmarks/dtw_kernels.py
	$(VENV)/bin/python benchmarks/prune.py
