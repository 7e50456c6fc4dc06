# Vigil: `make up` runs the stack with a demo feed, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install up test test-faults unit lint format bench bench-responder bench-reporter asyncapi lock clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Vigil needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

up: install  ## run broker, Postgres, the five services and a demo alert feed
	$(BIN)/vigil up --demo

# A test that outlives its timeout is run once more, and reported as rerun: under the full parallel
# load a few integration tests have, rarely and each time different ones, waited out their timeout.
RERUN_HUNG := --reruns 1 --only-rerun Timeout

# Six workers on two cores: the integration tests spend much of their time waiting on the broker and
# Postgres, and four left a third of the CPU idle (the suite took 16 min at four, 13.6 at six).
test: install  ## unit, integration and end-to-end tests against the real broker and Postgres
	$(BIN)/python -m pytest -n 6 --dist loadgroup -m "not faults" $(RERUN_HUNG)

test-faults: install  ## crashes, outages, poison and hangs injected into the running stack, with the accounting table
	$(BIN)/python -m pytest tests/faults -m faults -p no:randomly -n 3 -q -rA

unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services vigil bench tests

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install  ## every benchmark: detector vs a faust baseline, scaling, latency, end to end, responder, analyzer, reporter, leases, stream windows; targets
	$(BIN)/python -m bench.run

bench-responder: install  ## playbook steps planned, enqueued and executed per second (Postgres only)
	$(BIN)/python -m bench.run --only responder --out bench/results/responder.json

bench-reporter: install  ## the query API's queries on 100,000 incidents and 10 million alerts (Postgres only)
	$(BIN)/python -m bench.run --only reporter --out bench/results/reporter.json

asyncapi: install  ## regenerate docs/asyncapi.yaml from the event models and topics
	$(BIN)/vigil asyncapi

lock:  ## re-pin every dependency after changing pyproject.toml
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet -e '.[dev]'
	.lockenv/bin/python -m pip freeze --exclude-editable | grep -v '^vigil' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
