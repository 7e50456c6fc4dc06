# Vigil: `make up` runs the stack with a demo feed, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install up test unit lint format bench bench-responder asyncapi lock clean

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

test: install  ## unit, integration and end-to-end tests against the real broker and Postgres
	$(BIN)/python -m pytest -n 4 --dist loadgroup

unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services vigil bench tests

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install  ## alerts/s through the detector and end to end, latency percentiles, response steps/s
	$(BIN)/python -m bench.run

bench-responder: install  ## playbook steps planned, enqueued and executed per second (Postgres only)
	$(BIN)/python -m bench.run --only responder --out bench/results/responder.json

asyncapi: install  ## regenerate docs/asyncapi.yaml from the event models and topics
	$(BIN)/vigil asyncapi

lock:  ## re-pin every dependency after changing pyproject.toml
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet -e '.[dev]'
	.lockenv/bin/python -m pip freeze --exclude-editable | grep -v '^vigil' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
