# The two commands of the README: `make demo` and `make test`. Both prepare the machine first.
.PHONY: setup demo plc-demo test check bench examples check-examples

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) -m iotwasm.cli.main up examples/greenhouse --data .iotwasm/demo $(ARGS)

# simulated PLCs → Modbus → WASM plausibility check → PostgreSQL + bus, with a rule (examples/plc)
plc-demo: setup
	@$(PY) examples/plc/run.py $(ARGS)

# lint (ruff) and types (mypy, strict on the engine, container and messaging layers) first:
# seconds, and a failure there names the line. The tests run in TEST_WORKERS processes, a test
# file per process at a time (its module fixtures, brokers and nodes stay together); each test
# starts its own servers on ports reserved across processes (tests/ports.py). TEST_WORKERS=0
# runs them in this process, one after another.
TEST_WORKERS ?= 2
test: setup
	@.venv/bin/ruff check src tests benchmarks scripts examples
	@.venv/bin/mypy
	@$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

# lint and types alone
check: setup
	@.venv/bin/ruff check src tests benchmarks scripts examples
	@.venv/bin/mypy

bench: setup
	@$(PY) benchmarks/run.py $(ARGS)

examples: setup
	@bash examples/build.sh

check-examples: setup
	@bash examples/build.sh --check
