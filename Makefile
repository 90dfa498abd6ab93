# rayfleet: `make serve` starts the service, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
INSTALLED := $(VENV)/.installed

.PHONY: install postgres chromium serve test check lint types fmt lock bench clean

install: $(INSTALLED)

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(UV): requirements-bootstrap.txt | $(PY)
	$(PY) -m pip install --quiet --require-hashes -r requirements-bootstrap.txt

# Every dependency comes from the hashed lock; the project itself is installed editable.
$(INSTALLED): $(UV) requirements.lock pyproject.toml
	$(UV) pip install --quiet --python $(PY) --require-hashes -r requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	touch $(INSTALLED)

serve: install
	$(VENV)/bin/rayfleet serve

# The state-layer tests start a private PostgreSQL server: its binaries must be installed.
postgres:
	scripts/ensure-postgres

# The console's browser tests drive Debian's Chromium (never a browser Playwright downloads).
chromium:
	scripts/ensure-chromium

test: install postgres chromium
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

types: install
	$(VENV)/bin/mypy

check: lint types test

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Re-pin after changing dependencies in pyproject.toml.
lock: $(UV)
	$(UV) pip compile pyproject.toml --extra test --generate-hashes --python-version 3.11 \
		--universal -o requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
