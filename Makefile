# Two commands for a newcomer: `make demo` (install + run the pipeline on the
# embedded demo data) and `make test` (install + lint + tests). CI runs `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.moaspace-installed
DEMO_OUT ?= demo_out

.PHONY: install demo test test-fast lint bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# CPU build of torch first (pinned), so nothing pulls a multi-GB CUDA wheel
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/moaspace demo --out $(DEMO_OUT)

lint: install
	$(BIN)/ruff check src tests benchmarks

# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
test: install lint
	$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# While editing: the suite without the tests marked slow (clean-clone install, long runs).
test-fast: install lint
	$(BIN)/pytest -m "not slow"

# Debian packages for the report rendering test (needs root; skipped when present).
system-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver present"; \
	else \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	fi

bench: install
	$(BIN)/python benchmarks/bench_gctx.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
