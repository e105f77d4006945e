# The two commands of the README: `make demo` and `make test`. Both prepare the machine first.
.PHONY: setup demo plc-demo test bench examples check-examples

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) -m iotwasm.cli.main up examples/greenhouse --data .iotwasm/demo $(ARGS)

# simulated PLCs → Modbus → WASM plausibility check → PostgreSQL + bus, with a rule (examples/plc)
plc-demo: setup
	@$(PY) examples/plc/run.py $(ARGS)

test: setup
	@$(PY) -m pytest $(ARGS)

bench: setup
	@$(PY) benchmarks/run.py $(ARGS)

examples: setup
	@bash examples/build.sh

check-examples: setup
	@bash examples/build.sh --check
