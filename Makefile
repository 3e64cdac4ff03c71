# HaloTrack: `make run` shows the demo, `make test` runs the whole suite. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test audit bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'pip==26.3' 'setuptools==84.2.1'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# `make run ARGS='--port 8180 --site-port 9101 --metrics-port 9202'` runs a second demo beside the first.
run: $(STAMP)
	$(BIN)/halo-proxy demo $(ARGS)

test: $(STAMP) audit
	$(BIN)/python -m pytest

# Known vulnerabilities in the installed pins fail the build; `make audit ARGS=--strict` also fails when the
# vulnerability service cannot be reached.
audit: $(STAMP)
	$(BIN)/python tools/audit.py $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/python -m ruff check halo_proxy tests bench tools

clean:
	rm -rf $(VENV) .halo build *.egg-info
