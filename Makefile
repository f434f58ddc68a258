# Two commands matter: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DB := .demo/demo.db

.PHONY: install install-test install-bench browser postgres demo demo-postgres test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-postgres: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[postgres]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

$(VENV)/.installed-bench: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

install-bench: $(VENV)/.installed-bench

demo: install
	rm -rf .demo && mkdir -p .demo
	$(BIN)/campaign-runner run campaigns/demo.yaml --sandbox --db $(DEMO_DB)
	$(BIN)/campaign-runner report demo --db $(DEMO_DB) --format json
	$(BIN)/campaign-runner report demo --db $(DEMO_DB) --format html --output .demo/demo-report.html

# The browser tests open the html report in Debian's Chromium (Playwright drives it; it downloads no
# browser of its own). Installed here when missing, which needs root (as in CI); otherwise say how.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "warning: no chromium: the browser tests are skipped (sudo apt-get install chromium)"; \
	fi

# Half of the suite runs on PostgreSQL: a throwaway server from the machine's own binaries (Debian's
# postgresql package), installed here when missing, which needs root (as in CI); otherwise say how.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's postgresql for the PostgreSQL tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
		echo "warning: no PostgreSQL: its tests are skipped (sudo apt-get install postgresql)"; \
	fi

# The demo on a throwaway PostgreSQL server (tests/pgserver.py starts it, and removes it after).
demo-postgres: postgres $(VENV)/.installed-postgres
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tests/pgserver.py -- sh -c '\
		campaign-runner run campaigns/demo.yaml --sandbox --db "$$CAMPAIGN_RUNNER_DB" && \
		campaign-runner report demo --format json && \
		campaign-runner status'

test: install-test browser postgres
	$(BIN)/ruff check campaign_runner tests bench
	$(BIN)/ruff format --check campaign_runner tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The issue's figures (B1-B5) as a Markdown table; BENCHMARKS.md says what each row means.
# BENCH_ARGS="--quick" divides every size by 10; "b1 b4" runs only those.
bench: install-bench
	$(BIN)/ruff check bench
	$(BIN)/python bench/run.py --json bench-results.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo build *.egg-info .pytest_cache .hypothesis
