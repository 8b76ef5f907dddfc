# Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTOS := $(shell find protos -name '*.proto' | sort)

.PHONY: install install-runtime serve test history lint generate check-generated postgres bench h2load clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

## Runtime dependencies only, non-editable (the Docker image uses this).
install-runtime:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir .

serve: $(STAMP)
	$(BIN)/apikeys-server

## Runs the whole suite; the PostgreSQL tests need the local server, started here if down.
test: $(STAMP) postgres
	$(PY) -m pytest -q

## A longer run of the revocation history checker (about 4 minutes) on the
## local PostgreSQL; HISTORY_ARGS="--stall 16" adds stalled deletes. See
## docs/REVOCATION.md.
HISTORY_ARGS ?=
history: $(STAMP) postgres
	$(PY) -m tests.replicas.history --seconds 180 $(HISTORY_ARGS)

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
	  echo "PostgreSQL at 127.0.0.1:5432 is not ready" >&2; exit 1

lint: $(STAMP)
	$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server clients

generate: $(STAMP)
	rm -rf generated/voiso
	mkdir -p generated
	PATH="$(abspath $(BIN)):$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=generated --grpc_python_out=generated \
	  --mypy_out=quiet:generated --mypy_grpc_out=quiet:generated $(PROTOS)
	for d in generated/voiso generated/voiso/apikeys generated/voiso/apikeys/v1; do \
	  touch $$d/__init__.py $$d/py.typed; done

## Fails when generated/ differs from what `make generate` writes.
check-generated: generate
	@git diff --exit-code --stat -- generated || \
	  { echo "generated/ is stale: run 'make generate' and commit" >&2; exit 1; }
	@test -z "$$(git ls-files --others --exclude-standard generated)" || \
	  { echo "generated/ has uncommitted files: run 'make generate' and commit" >&2; exit 1; }

## The whole benchmark suite (under 5 minutes); see docs/BENCHMARKS.md.
bench: $(STAMP) h2load
	$(PY) -m bench

## h2load (the C HTTP/2 load generator the benchmarks drive), from Debian's nghttp2-client.
h2load:
	@command -v h2load >/dev/null || apt-get install -y nghttp2-client || \
	  { apt-get update && apt-get install -y nghttp2-client; }

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
