# The two commands of the README: `make demo` and `make test`. Both set up .venv first (idempotent).
.PHONY: setup demo test test-slow test-fast test-nightly lint clean

VENV := .venv
DEMO_OUT := outputs/demo

$(VENV)/.ready: pyproject.toml constraints.txt scripts/setup.sh
	./scripts/setup.sh
	touch $@

setup: $(VENV)/.ready

# Exit code 1 is expected: examples/prompts.csv has one row that is rejected on purpose.
demo: setup
	$(VENV)/bin/reelbatch run examples/prompts.csv --out $(DEMO_OUT) --db sqlite:///$(DEMO_OUT)/reelbatch.db; \
	  code=$$?; [ $$code -le 1 ] || exit $$code
	$(VENV)/bin/reelbatch runs --db sqlite:///$(DEMO_OUT)/reelbatch.db --limit 3

# Everything but the `slow` tests (whole `reelbatch run` processes racing, killed, resumed, signalled; the heaviest
# multi-rank and server runs), which `make test-slow` runs and CI runs after this. Under 15 minutes on two cores;
# --durations shows where the time goes.
test: setup
	$(VENV)/bin/python -m pytest -q -m "not slow" --durations=15

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow --durations=15

# The fast lane while working: no torchrun ranks, no PostgreSQL and no servers of a test's own (S3, Prefect, Dask):
# under 3 minutes on two cores; `make test` runs everything.
test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not torchrun and not postgres and not server and not slow"

# The property-based tests with the `nightly` Hypothesis profile: twenty times the examples of `make test`.
test-nightly: setup
	HYPOTHESIS_PROFILE=nightly $(VENV)/bin/python -m pytest -q -m "hypothesis and not postgres"

# Style, import order and formatting (ruff), then types (mypy, settings in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check reelbatch tests bench scripts
	$(VENV)/bin/ruff format --check reelbatch tests bench scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
