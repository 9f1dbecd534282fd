# One command to run the server, one to run the whole test suite (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8888
TOKEN ?= chatbridge-dev-token

.PHONY: run test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Start Jupyter Server with the extension on its embedded defaults (EchoAgent).
run: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@echo "Chat page: http://127.0.0.1:$(PORT)/chatbridge/?token=$(TOKEN)  (API: http://127.0.0.1:$(PORT)/chatbridge/api/)"
	$(BIN)/jupyter server --no-browser --port=$(PORT) --ServerApp.port_retries=0 \
		--IdentityProvider.token=$(TOKEN) $(if $(filter 0,$(shell id -u)),--allow-root,)

# Install the test dependencies (Debian's chromium for the browser tests, nodejs for the
# page's JavaScript vector tests and redis-server for the Redis store tests, when they are
# missing) and run the whole suite; here a missing browser, node or redis-server fails
# those tests instead of skipping them.
test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@if ! command -v node >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Debian's nodejs for the JavaScript vector tests (tests/js)"; \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs || exit 1; \
		else \
			echo "The JavaScript vector tests need node (Debian's nodejs package)." >&2; \
			echo "Install it as root: apt-get update && apt-get install -y nodejs" >&2; \
			exit 1; \
		fi; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Debian's chromium for the browser tests (tests/browser)"; \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || exit 1; \
		else \
			echo "The browser tests need Debian's chromium at /usr/bin/chromium." >&2; \
			echo "Install it as root: apt-get update && apt-get install -y chromium" >&2; \
			exit 1; \
		fi; \
	fi
	@if ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Debian's redis-server for the Redis store tests"; \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server || exit 1; \
		else \
			echo "The Redis store tests need Debian's redis-server." >&2; \
			echo "Install it as root: apt-get update && apt-get install -y redis-server" >&2; \
			exit 1; \
		fi; \
	fi
	CHATBRIDGE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest

bench: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python -m bench

lint: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/ruff check jupyter_chatbridge tests bench notebooks
	$(BIN)/ruff format --check jupyter_chatbridge tests bench
	$(BIN)/mypy jupyter_chatbridge

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
