# msdmatch: `make demo` runs the whole cascade on the demo corpus; `make test` runs the tests.
VENV ?= .venv
OUT ?= demo_out

.PHONY: setup demo lint test test-slow bench

setup:
	@./scripts/setup.sh

demo: setup
	$(VENV)/bin/msdmatch demo $(OUT)

#: the pure kernels, checked by mypy (retime.py works on mido objects and is left out)
KERNELS = $(filter-out msdmatch/kernels/retime.py,$(wildcard msdmatch/kernels/*.py))

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(KERNELS)

test: lint
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow

bench: setup
	$(VENV)/bin/python benchmarks/featurize.py
	$(VENV)/bin/python benchmarks/dtw_kernels.py
	$(VENV)/bin/python benchmarks/prune.py
