# go-advisory-lock. Every target finds Postgres the way the tests do:
# PG_CONNECTION_STRING, else 127.0.0.1:5432, else a throwaway cluster.

GO          ?= go
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
BIN         := bin
MODULE      := $(shell $(GO) list -m)

.PHONY: all test test-short lint bench demo build clean provision chaos

all: lint test

## provision: install what the tests need beyond Go and PostgreSQL (scripts/provision)
provision:
	@scripts/provision

## test: unit tests, live tests and the conformance suite, with -race; then the examples, the OpenTelemetry
## observer (otelsqllock/), the driver matrix (drivers/) and interop/: withlock against the real golang-migrate,
## goose, Rails, django-pglocks and Node clients
test: provision
	$(GO) test -race -shuffle=on -count=1 -timeout 10m ./...
	$(GO) run ./internal/withpg -- sh -c "cd examples && $(GO) test -race -count=1 -timeout 5m ./..."
	$(GO) run ./internal/withpg -- sh -c "cd otelsqllock && $(GO) test -race -count=1 -timeout 5m ./..."
	$(GO) run ./internal/withpg -- sh -c "cd drivers && $(GO) test -race -count=1 -parallel 4 -timeout 10m ./..."
	$(GO) run ./internal/withpg -- sh -c "cd interop && $(GO) test -count=1 -timeout 5m ./... && cd gooselegacy && $(GO) test -count=1 -timeout 5m ./..."

## test-short: the same, with fewer torture iterations
test-short: provision
	$(GO) test -race -short -count=1 ./...

## lint: gofmt, go vet, staticcheck, and sqllock/keyspace import only the standard library
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd examples && $(GO) vet ./...
	cd otelsqllock && $(GO) vet ./... && $(STATICCHECK) ./...
	cd drivers && $(GO) vet ./...
	cd interop && $(GO) vet ./... && cd harness && $(GO) vet ./... && cd ../gooselegacy && $(GO) vet ./...
	$(STATICCHECK) ./...
	@for pkg in ./sqllock ./keyspace; do \
		ext=$$($(GO) list -deps -f '{{if not .Standard}}{{.ImportPath}}{{end}}' $$pkg | grep -v '^$(MODULE)'); \
		if [ -n "$$ext" ]; then echo "$$pkg imports outside the standard library: $$ext"; exit 1; fi; \
	done
	@echo "lint: ok"

## bench: the benchmarks, library against hand-written SQL on the same driver, with ratios
## (BENCHCOUNT runs, each a fresh process; see internal/benchrun and docs/benchmarks.md)
BENCHCOUNT ?= 20
BENCH      ?= .
bench:
	$(GO) run ./internal/benchrun -count $(BENCHCOUNT) -bench '$(BENCH)' -o bench.txt
	$(GO) run golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da bench.txt || true
	$(GO) run ./internal/benchratio bench.txt

## build: the withlock binary in ./bin
build:
	$(GO) build -o $(BIN)/withlock ./cmd/withlock

## demo: two withlock processes contend for one lock; their runs never overlap
demo: build
	@$(GO) run ./internal/demo $(BIN)/withlock

## chaos: the chaos run (docs/reliability.md#chaos-run): library and withlock workers (three behind a PgBouncer in
## transaction mode) take one lock with
## fencing tokens while holders are paused, killed, cut off and terminated, and the server restarts and fails
## over; fails on a stale write, a lost increment, a leftover lock or an unexplained overlap.
## Longer: make chaos CHAOSFLAGS='-grants 20000' (or -duration 30m); the damage without fencing: CHAOSFLAGS=-unfenced
CHAOSFLAGS ?=
chaos:
	$(GO) run ./internal/chaos/cmd/chaos $(CHAOSFLAGS)

clean:
	rm -rf $(BIN) bench.txt
