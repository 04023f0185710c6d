# prefetchd: make targets a newcomer can guess.
GO      ?= go
PKGS    ?= ./...
BENCH   ?= .
# Test timeout per package binary; the whole suite runs in a few minutes.
TESTFLAGS ?= -race -count=1 -timeout 10m

.PHONY: all build run test setup bench proto lint lint-ops fmt tidy clean

all: build test

## build: compile every command into bin/
build:
	$(GO) build -o bin/ ./cmd/...

## run: start the service on embedded defaults (in-process Kafka broker and
## Redis store, bundled model, replay of NASA July 1995 sessions), with a
## demo threshold and a fresh admin token (scripts/demo.sh prints its path).
run:
	@./scripts/setup.sh run
	@echo "building bin/prefetchd (the first build compiles every dependency: a minute or two)"
	@$(GO) build -o bin/prefetchd ./cmd/prefetchd
	@./scripts/demo.sh bin/prefetchd $(ARGS)

## test: every test, with the race detector; installs redis-server and a C
## toolchain first when they are missing (see scripts/setup.sh).
test: setup
	$(GO) test $(TESTFLAGS) $(PKGS)

## setup: install what the tests need beyond Go, or say how.
setup:
	@./scripts/setup.sh test

## chaos: the long fault-injection soak against real processes (devbroker,
## redis-server, Redis Cluster, prefetchd); `make test` runs its short set.
.PHONY: chaos
chaos: setup
	$(GO) test -tags chaos -count=1 -timeout 30m -v ./internal/chaos/

## bench: every benchmark once, with allocations.
bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -count 1 $(PKGS)

## proto: regenerate the checked-in gRPC code (needs protoc; plugins are pinned in go.mod).
proto:
	./proto/gen.sh

## lint: gofmt, go vet and staticcheck.
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

## lint-ops: check the operations files: Prometheus alert rules and their unit
## tests (promtool, installed when missing), the Grafana dashboard (its queries
## parsed by promtool, its metrics checked against prefetchd's first scrape),
## the Dockerfile and the Kubernetes manifests (go test ./deploy).
lint-ops:
	@./scripts/setup.sh ops
	promtool check rules deploy/prometheus/rules.yml
	cd deploy/prometheus && promtool test rules rules_test.yml
	@tmp=$$(mktemp -d) && \
	$(GO) test -count=1 -run '^TestDashboard$$' ./deploy -args -dashboard-rules=$$tmp/dashboard.yml && \
	promtool check rules $$tmp/dashboard.yml; rc=$$?; rm -rf $$tmp; exit $$rc
	$(GO) test -count=1 ./deploy/...

fmt:
	gofmt -w $$(git ls-files '*.go')

tidy:
	$(GO) mod tidy

clean:
	rm -rf bin/
