# HaloTrack: `make run` shows the demo, `make test` runs the whole suite. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.installed-bench-stamp

.PHONY: run test test-slow audit browser deploy-tools bench bench-scaling bench-tools profile soak lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'pip==26.3' 'setuptools==84.2.1'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# `make run ARGS='--port 8180 --site-port 9101 --metrics-port 9202'` runs a second demo beside the first.
run: $(STAMP)
	$(BIN)/halo-proxy demo $(ARGS)

test: $(STAMP) audit browser deploy-tools
	$(BIN)/python -m pytest

# The reconciled load test: two proxy processes under mixed traffic, a worker killed, everything accounted for.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow tests/slow -s

# The browser tests (tests/browser/) drive Debian's chromium through Playwright: installed here when missing,
# never downloaded by a test tool.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x $(CHROMIUM) || { echo "make: installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# The deployment tests (tests/deploy/) run Debian's pgbouncer, prometheus (with promtool), haproxy and systemd's
# offline checks: installed here when missing, like chromium.
DEPLOY_TOOLS ?= /usr/sbin/pgbouncer /usr/bin/prometheus /usr/bin/promtool /usr/sbin/haproxy /usr/bin/systemd-analyze
DEPLOY_PACKAGES ?= pgbouncer prometheus haproxy systemd
deploy-tools:
	@missing=; for tool in $(DEPLOY_TOOLS); do test -x $$tool || missing=1; done; \
	test -z "$$missing" || { echo "make: installing Debian's $(DEPLOY_PACKAGES) for the deployment tests"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEPLOY_PACKAGES) >/dev/null; }

# Known vulnerabilities in the installed pins fail the build; `make audit ARGS=--strict` also fails when the
# vulnerability service cannot be reached.
audit: $(STAMP)
	$(BIN)/python tools/audit.py $(ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The benchmark drives its targets with wrk (closed loop) and bench/openloop.c (fixed rates, built with the
# machine's C compiler), and compares HaloTrack with nginx: Debian's packages, installed here when missing.
bench-tools:
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v cc >/dev/null || { \
	  echo "make: installing Debian's wrk, nginx and gcc for the benchmark"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends wrk nginx gcc libc6-dev >/dev/null; }

# Every scenario of issue 16 in one bounded run (about 8 minutes): saturation, then latency at fixed rates;
# appends a section and a plot to docs/performance.md. `make bench ARGS='--no-append'` only prints.
bench: $(BENCH_STAMP) bench-tools
	$(BIN)/python bench/run.py $(ARGS)

# The same with one and two processes per proxy (about 9 minutes): how throughput grows with processes.
bench-scaling: $(BENCH_STAMP) bench-tools
	$(BIN)/python bench/run.py --workers 1,2 --scenario returning,new_visitor $(ARGS)

# py-spy profiles of the returning-visitor, new-visitor and lead hot paths, written to docs/perf/.
profile: $(BENCH_STAMP) bench-tools
	$(BIN)/python bench/hotpath.py $(ARGS)

# Ten minutes of mixed traffic against one worker, its RSS sampled; appended to docs/performance.md.
soak: $(BENCH_STAMP) bench-tools
	$(BIN)/python bench/soak.py --minutes 10 $(ARGS)

lint: $(STAMP)
	$(BIN)/python -m ruff check halo_proxy tests bench tools

clean:
	rm -rf $(VENV) .halo build *.egg-info
