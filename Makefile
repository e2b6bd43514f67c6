# The two commands: `make run` (embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WEB_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PROMETHEUS_MULTIPROC_DIR ?= /tmp/chat-metrics-$(PORT)

.PHONY: venv run serve test bench migrate seed lint clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

migrate: venv
	$(PY) manage.py migrate --noinput

seed: migrate
	$(PY) manage.py seed_demo --once

# Embedded default: SQLite, in-memory layer, local cache; one process.
run: seed
	$(PY) manage.py collectstatic --noinput -v0
	$(PY) manage.py runserver $(HOST):$(PORT)

# Production shape: needs DATABASE_URL, REDIS_URL and SECRET_KEY. HTTP on
# granian's WSGI interface (PORT), sockets on uvicorn + Channels (WS_PORT), one
# worker per core each; pages tell browsers where sockets are (WS_PUBLIC_URL).
# Behind a reverse proxy, route /ws/ to WS_PORT and the rest to PORT instead.
WS_PORT ?= $(shell echo $$(($(PORT) + 1)))
HTTP_THREADS ?= 8
WS_PUBLIC_URL ?= ws://$(HOST):$(WS_PORT)
# The socket server accepts the pages' origin (scheme, host and port compared).
CSRF_TRUSTED_ORIGINS ?= http://$(HOST):$(PORT)
serve: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	rm -rf $(PROMETHEUS_MULTIPROC_DIR) && mkdir -p $(PROMETHEUS_MULTIPROC_DIR)
	export PROMETHEUS_MULTIPROC_DIR=$(PROMETHEUS_MULTIPROC_DIR) WS_PUBLIC_URL=$(WS_PUBLIC_URL) \
		CSRF_TRUSTED_ORIGINS=$(CSRF_TRUSTED_ORIGINS); \
	$(VENV)/bin/uvicorn chatsite.asgi:application --host $(HOST) --port $(WS_PORT) \
		--workers $(WEB_WORKERS) --ws websockets --ws-max-size 65536 \
		--timeout-keep-alive 30 --no-access-log --loop uvloop --http httptools & \
	sockets=$$!; trap 'kill $$sockets 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/granian --interface wsgi chatsite.wsgi:application --host $(HOST) \
		--port $(PORT) --workers $(WEB_WORKERS) --blocking-threads $(HTTP_THREADS) \
		--no-ws --log-level warning

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) bench/run_all.py

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) staticfiles db.sqlite3
