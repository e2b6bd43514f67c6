# The two commands: `make run` (embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WEB_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PROMETHEUS_MULTIPROC_DIR ?= /tmp/chat-metrics-$(PORT)
# The socket server's protocol (docs/PERFORMANCE.md, "Sockets"): uvicorn's
# sans-I/O websockets writing shared frames; WS_PROTOCOL=websockets for stock.
WS_PROTOCOL ?= chatsite.websocket:SocketProtocol
# `make cluster`: the scale-out layout on loopback (docs/SCALING.md), pid files here.
CLUSTER_DIR ?= $(CURDIR)/.cluster
# Ports of its own: the scale-out tests use 7101-7107 and 7201-7203.
CLUSTER_REDIS_PORTS ?= 7111-7116
CLUSTER_LAYER_PORT ?= 7117
CLUSTER_PG_PORTS ?= --primary-port 7211 --replica-port 7212 --bouncer-port 7213

.PHONY: venv run serve test bench migrate seed lint clean cluster cluster-stop

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
		--workers $(WEB_WORKERS) --ws $(WS_PROTOCOL) --ws-max-size 65536 \
		--timeout-keep-alive 30 --no-access-log --loop uvloop --http httptools & \
	sockets=$$!; trap 'kill $$sockets 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/granian --interface wsgi chatsite.wsgi:application --host $(HOST) \
		--port $(PORT) --workers $(WEB_WORKERS) --blocking-threads $(HTTP_THREADS) \
		--no-ws --log-level warning

test: venv
	$(PY) -m pytest

# A PostgreSQL primary + streaming replica behind PgBouncer and a 3+3 Redis
# Cluster (+ a plain Redis for the channel layer), started by pid under
# CLUSTER_DIR; no system service is touched. Prints make serve's environment.
cluster: venv
	@mkdir -p $(CLUSTER_DIR)
	@$(PY) -m chatsite.scaleout.postgres up --dir $(CLUSTER_DIR)/postgres $(CLUSTER_PG_PORTS) > $(CLUSTER_DIR)/postgres.env
	@$(PY) -m chatsite.scaleout.redis_cluster up --dir $(CLUSTER_DIR)/redis --ports $(CLUSTER_REDIS_PORTS) --channel-layer-port $(CLUSTER_LAYER_PORT) > $(CLUSTER_DIR)/redis.env
	@cat $(CLUSTER_DIR)/postgres.env $(CLUSTER_DIR)/redis.env > $(CLUSTER_DIR)/env
	@cat $(CLUSTER_DIR)/env
	@echo "# serve on it: set -a; . $(CLUSTER_DIR)/env; set +a; SECRET_KEY=... make serve"

cluster-stop:
	-@$(PY) -m chatsite.scaleout.redis_cluster down --dir $(CLUSTER_DIR)/redis --ports $(CLUSTER_REDIS_PORTS) --channel-layer-port $(CLUSTER_LAYER_PORT)
	-@$(PY) -m chatsite.scaleout.postgres down --dir $(CLUSTER_DIR)/postgres $(CLUSTER_PG_PORTS)

bench: venv
	$(PY) bench/run_all.py

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) staticfiles db.sqlite3
