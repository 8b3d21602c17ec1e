# The two commands: `make run` and `make test`. Each builds its own venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= .apex-demo

.PHONY: run test install redis chromium clean demo-venues

$(BIN)/apex: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/apex

install: $(BIN)/apex

# Replays the bundled recording through pipeline.yaml on the embedded defaults
# (embedded ClickHouse, paper venue) into a fresh demo state dir, and prints the summary.
run: install
	rm -rf $(DEMO)
	APEX_ENV=paper $(BIN)/apex run pipeline.yaml --source recording:recordings/argus-sample.jsonl --state-dir $(DEMO)
	@echo "audit trail: $(BIN)/apex audit --state-dir $(DEMO) SIGNAL_ID"

# Apex against both venue simulators (OKX through ccxt, IBKR through ib_async) with a private
# Redis: publishes the sample recording and checks each venue received one order per fill.
demo-venues: install redis
	$(BIN)/python scripts/venues_demo.py

redis:
	@bash scripts/ensure-redis.sh

chromium:
	@bash scripts/ensure-chromium.sh

test: install redis chromium
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .apex .pytest_cache
