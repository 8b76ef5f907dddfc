# Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTOS := $(shell find protos -name '*.proto' | sort)

TS := clients/typescript
TS_DEPS := $(TS)/node_modules/.package-lock.json
GENERATED := generated $(TS)/src/gen

.PHONY: install serve console test fuzz history lint settings-table generate check-generated postgres \
  bench h2load chromium screenshots image image-tools clean

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

## The TypeScript client's packages, exactly as package-lock.json pins them.
$(TS_DEPS): $(TS)/package.json $(TS)/package-lock.json
	cd $(TS) && npm ci --no-audit --no-fund
	touch $@

serve: $(STAMP)
	$(BIN)/apikeys-server

## The API keys page on http://127.0.0.1:8080 over the server that `make serve` runs,
## signed in with development tokens from its data directory.
console: $(STAMP)
	$(BIN)/apikeys-console --dev

## Runs the whole suite; the PostgreSQL tests need the local server, started here if down,
## the console's browser tests Debian's chromium and the attack tests h2load, each
## installed here if missing. The TypeScript client's test needs its packages; the
## container test builds the image itself (`make image`).
test: $(STAMP) $(TS_DEPS) postgres chromium h2load
	$(PY) -m pytest -q

## The property-based suite at length (thousands of examples per property;
## about ten minutes), with the examples each RPC got. `make test` runs it briefly.
fuzz: $(STAMP) postgres
	APIKEYS_HYPOTHESIS_PROFILE=long $(PY) -m pytest -q tests/property --hypothesis-show-statistics

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

lint: $(STAMP) $(TS_DEPS)
	$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server clients console
	cd $(TS) && npx tsc --noEmit

## Rewrites the README's Configuration table from the option declarations.
settings-table: $(STAMP)
	$(PY) -m server.settings --write-readme README.md
	$(PY) -m console.settings_table --write-readme README.md

## Python (generated/) and TypeScript ($(TS)/src/gen, buf.gen.yaml) code from protos/.
generate: $(STAMP) $(TS_DEPS)
	rm -rf generated/voiso
	mkdir -p generated
	PATH="$(abspath $(BIN)):$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=generated --grpc_python_out=generated \
	  --mypy_out=quiet:generated --mypy_grpc_out=quiet:generated $(PROTOS)
	for d in generated/voiso generated/voiso/apikeys generated/voiso/apikeys/v1; do \
	  touch $$d/__init__.py $$d/py.typed; done
	$(BIN)/buf generate

## Fails when generated code differs from what `make generate` writes.
check-generated: generate
	@git diff --exit-code --stat -- $(GENERATED) || \
	  { echo "generated code is stale: run 'make generate' and commit" >&2; exit 1; }
	@test -z "$$(git ls-files --others --exclude-standard $(GENERATED))" || \
	  { echo "generated code has uncommitted files: run 'make generate' and commit" >&2; exit 1; }

## The whole benchmark suite (about 10 minutes; the revocation section needs the local
## PostgreSQL, started here if down); see docs/BENCHMARKS.md.
bench: $(STAMP) h2load postgres
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

## The container image, built by buildah from a base made of Debian packages
## (no registry needed); see "Container image" in the README. The base's
## tarball is cached under IMAGE_CACHE; the image's id goes to IIDFILE.
IMAGE ?= localhost/voiso-apikeys:dev
IMAGE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/voiso-apikeys
IIDFILE ?= $(IMAGE_CACHE)/image-id
BASE_TARBALL := $(IMAGE_CACHE)/debian-bookworm-python3.tar
# The CA bundle pip trusts inside the build: the host's, so that a
# TLS-inspecting proxy the host trusts is trusted there too.
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
IMAGE_PACKAGES := buildah podman runc mmdebstrap
APT_INSTALL := apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=600

image: image-tools $(BASE_TARBALL)
	@base=localhost/apikeys-base:$$(sha256sum $(BASE_TARBALL) | cut -c1-12); \
	if ! buildah inspect --type image $$base >/dev/null 2>&1; then \
	  ctr=$$(buildah from scratch) && buildah add --quiet $$ctr $(BASE_TARBALL) / && \
	  buildah commit --quiet --rm --format docker $$ctr $$base >/dev/null || exit 1; \
	fi; \
	buildah build --quiet --isolation chroot --format docker --layers \
	  --volume $(CA_BUNDLE):/etc/ssl/certs/ca-certificates.crt:ro \
	  --build-arg BASE=$$base --iidfile $(IIDFILE) --tag $(IMAGE) . >/dev/null
	@id=$$(cat $(IIDFILE)); \
	  echo "$(IMAGE) ($$(echo $${id#sha256:} | cut -c1-12)): $$(buildah images --noheading --format '{{.Size}}' $$id)"

image-tools:
	@missing=; for tool in $(IMAGE_PACKAGES); do command -v $$tool >/dev/null || missing=1; done; \
	  test -z "$$missing" || $(APT_INSTALL) $(IMAGE_PACKAGES) || \
	  { apt-get update && $(APT_INSTALL) $(IMAGE_PACKAGES); }

# Debian's own python3 on a minimal bookworm, without documentation.
$(BASE_TARBALL):
	mkdir -p $(@D)
	mmdebstrap --quiet --format=tar --variant=minbase --include=python3,python3-venv,ca-certificates \
	  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	  --dpkgopt='path-exclude=/usr/share/locale/*' \
	  bookworm $@.part
	mv $@.part $@

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache $(TS)/node_modules
