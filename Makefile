# wearwatch — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := bash deploy/stack/stack.sh
# credentials the local stack generated for itself (git-ignored)
CREDS := .stack/credentials.env
WITH_CREDS := set -a; [ -f $(CREDS) ] && . ./$(CREDS); set +a;

.PHONY: help venv stack-up stack-down stack-status stack-prune browser-deps prom-deps test test-unit test-stack lint demo bench clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(BIN)/.installed: pyproject.toml
	@echo "==> creating virtualenv $(VENV) and installing wearwatch with its dev and bench tools"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[dev,bench]'
	@touch $@

venv: $(BIN)/.installed ## create the virtualenv with every dependency

stack-up: venv ## provision (once) and start Kafka, Mosquitto and InfluxDB on 127.0.0.1
	@$(STACK) up

stack-down: ## stop the local services this project started
	@$(STACK) down

stack-status: ## show which local services run, with pids and ports
	@$(STACK) status

lint: venv ## ruff, mypy and the package-layer contracts (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/mypy wearwatch ingest streams detectors alerts console tools bench
	$(BIN)/lint-imports --no-logo

test-unit: venv prom-deps ## unit tests only (no services needed)
	$(BIN)/pytest -m "not stack" -q

# Debian's own chromium + chromedriver (same source package, so versions always match); nothing downloaded by tests
browser-deps: ## headless Chromium and chromedriver from Debian for the console browser test (once)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
	  echo "==> installing Debian's chromium and chromium-driver"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
	    --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null; fi

# promtool checks and unit-tests the Prometheus alert rules (deploy/prometheus/). Only the promtool binary is taken
# from Debian's prometheus package, unpacked into the virtualenv: no Prometheus server is installed or started
prom-deps: venv ## promtool from Debian's prometheus package, for the alert-rule tests (once)
	@if [ -x $(BIN)/promtool ]; then :; else \
	  echo "==> unpacking promtool from Debian's prometheus package into $(BIN)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); tmp=$$(mktemp -d); \
	  ( cd $$tmp && { apt-get download -q prometheus >/dev/null 2>&1 || \
	      { $$SUDO apt-get update -qq && apt-get download -q prometheus >/dev/null 2>&1; }; } \
	    && dpkg-deb -x prometheus_*.deb root ) && install -m 755 $$tmp/root/usr/bin/promtool $(BIN)/promtool; \
	  rc=$$?; rm -rf $$tmp; exit $$rc; fi

test-stack: stack-up browser-deps ## integration and fault tests on the real local stack
	@$(WITH_CREDS) $(BIN)/pytest -m stack -q --durations=12

test: ## the whole suite: unit tests, then the local stack and the integration tests
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-stack

demo: stack-up ## simulator + gateway + worker for about a minute with an injected event
	@$(WITH_CREDS) $(BIN)/python -m tools.demo

stack-prune: stack-up ## end MQTT sessions that killed test/bench/demo runs left behind (the broker queues readings for them)
	@$(WITH_CREDS) $(BIN)/python deploy/stack/prune_sessions.py

bench: stack-prune ## benchmarks (detection quality, NAB, throughput); prints tables
	@$(WITH_CREDS) for b in bench/bench_*.py; do echo "==> $$b"; $(BIN)/python $$b || exit 1; done

clean: ## remove caches (keeps the provisioned stack in .stack/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache
