# The two commands: `make demo` (run the whole system on the embedded defaults) and `make test`.
# Each sets up what it needs: a .venv with the project installed (nothing else to install).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo demo-smoke test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/opencdms kernel install
	touch $(STAMP)

install: $(STAMP)

## Start everything on the embedded defaults and keep running until Ctrl-C.
demo: $(STAMP)
	$(BIN)/opencdms up

## Start everything, check that each part answers, print a summary and exit.
demo-smoke: $(STAMP)
	$(BIN)/opencdms up --smoke

## The whole test suite, against the embedded PostgreSQL and the server at
## OPENCDMS_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

## Speed against same-run baselines; prints ratios and medians.
bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/qc_products.py
	$(BIN)/python bench/notebooks.py

clean:
	rm -rf $(VENV) var .pytest_cache
