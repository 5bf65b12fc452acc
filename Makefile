# convoai-ledger: everything starts from a fresh clone with only Python and the package registries.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCAL := $(BIN)/python -m service.localdb run --data .data --
SOURCES := service tests migrations benchmarks

.PHONY: install run demo test chaos test-unit test-integration test-browser screenshots lint fmt bench migrate revision db-up db-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[local,dev]'
	touch $@

# Migrate, then serve the webhook + read API and the worker on http://127.0.0.1:8000 until Ctrl-C.
# Without DATABASE_URL an embedded PostgreSQL keeps its data in .data/postgres. Once it is ready,
# the console's address and the token to log in with are printed.
run: install
	$(BIN)/python -m service.localdb run --announce --data .data -- \
		sh -c '$(BIN)/convoai-ledger migrate && exec $(BIN)/convoai-ledger serve --with-worker'

# make run plus the Agora simulator on :8090: signed sessions flow in (PCU cap 20, so some joins are
# refused), the worker fetches histories and turns from the simulator. Its own data in .data/demo.
# Logs only errors, so that the console's address and token, printed once ready, stay in view (the
# console shows what the log would: agents, PCU against the cap, refused joins).
DEMO_ENV := PORT=8000 LOG_LEVEL=error AGORA_APP_ID=demo-app AGORA_WEBHOOK_SECRETS=demo-ncs-secret \
	AGORA_CUSTOMER_ID=demo-customer AGORA_CUSTOMER_SECRET=demo-customer-secret \
	AGORA_API_BASE_URL=http://127.0.0.1:8090/api/conversational-ai-agent HISTORY_GRACE_S=30
demo: install
	env $(DEMO_ENV) $(BIN)/python -m service.localdb run --announce --data .data/demo -- sh -c '\
		$(BIN)/convoai-ledger migrate || exit 1; \
		$(BIN)/convoai-ledger simulate --target http://127.0.0.1:8000 --port 8090 \
			--agents 2000 --rate 1 --duration 25 --shuffle --duplicates 0.05 & sim=$$!; \
		$(BIN)/convoai-ledger serve --with-worker & web=$$!; \
		trap "kill $$web $$sim 2>/dev/null" INT TERM; \
		wait $$web; kill $$sim 2>/dev/null; wait'

# The whole suite against TEST_DATABASE_URL if set, else a throw-away embedded PostgreSQL per
# worker process: TEST_WORKERS of them (each test module stays on one), 1 to run in this process.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# The slow reliability tests (marked chaos, left out of make test): PostgreSQL restarted under
# load, replicas and workers racing, a full run's logs searched for secrets. A few minutes.
chaos: install
	$(BIN)/python -m pytest -m chaos

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration tests/http

# The console in headless Chromium (Debian's chromium; skipped with a notice when it is missing).
test-browser: install
	$(BIN)/python -m pytest -m browser

# Retake docs/screenshots/ (the overview and an agent page) from the browser tests' demo data.
screenshots: install
	UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -m browser

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
