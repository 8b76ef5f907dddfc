# Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTOS := $(shell find protos -name '*.proto' | sort)

.PHONY: install install-runtime serve console test fuzz lint settings-table generate check-generated postgres bench h2load chromium screenshots clean

# xds-protos (Envoy's protos) also ships an older copy of OpenTelemetry's
# protos; whichever wheel pip installs last owns those files. The trace
# exporter needs opentelemetry-proto's own, so it is put back last.
RESTORE_OTEL_PROTO = $(PY) -m pip install --quiet --no-cache-dir --no-deps --force-reinstall \
	"opentelemetry-proto==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(RESTORE_OTEL_PROTO)
	touch $@

install: $(STAMP)

## Runtime dependencies only, non-editable (the Docker image uses this).
install-runtime:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir .
	$(RESTORE_OTEL_PROTO)

serve: $(STAMP)
	$(BIN)/apikeys-server

## The API keys page on http://127.0.0.1:8080 over the server that `make serve` runs,
## signed in with development tokens from its data directory.
console: $(STAMP)
	$(BIN)/apikeys-console --dev

## Runs the whole suite; the PostgreSQL tests need the local server, started here if down,
## the console's browser tests Debian's chromium and the attack tests h2load, each
## installed here if missing.
test: $(STAMP) postgres chromium h2load
	$(PY) -m pytest -q

## The property-based suite at length (thousands of examples per property;
## about ten minutes), with the examples each RPC got. `make test` runs it briefly.
fuzz: $(STAMP) postgres
	APIKEYS_HYPOTHESIS_PROFILE=long $(PY) -m pytest -q tests/property --hypothesis-show-statistics

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
	  echo "PostgreSQL at 127.0.0.1:5432 is not ready" >&2; exit 1

lint: $(STAMP)
	$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server clients console

## Rewrites the README's Configuration table from the option declarations.
settings-table: $(STAMP)
	$(PY) -m server.settings --write-readme README.md
	$(PY) -m console.settings_table --write-readme README.md

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

## Chromium (Debian's) for the console's browser tests, which drive it with Playwright.
chromium:
	@test -x /usr/bin/chromium || apt-get install -y chromium || \
	  { apt-get update && apt-get install -y chromium; }

## Retakes the console screenshots in docs/ through the browser test; commit them.
screenshots: $(STAMP) chromium
	APIKEYS_SCREENSHOTS=1 $(PY) -m pytest -q tests/console/test_browser.py -k "adds and desktop"

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
