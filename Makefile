# prefetchd: make targets a newcomer can guess.
GO      ?= go
PKGS    ?= ./...
BENCH   ?= .
# Test timeout per package binary; the whole suite runs in a few minutes.
TESTFLAGS ?= -race -count=1 -timeout 10m

.PHONY: all build run test bench proto lint fmt tidy clean

all: build test

## build: compile every command into bin/
build:
	$(GO) build -o bin/ ./cmd/...

## run: start the service on embedded defaults (in-process Kafka broker and
## Redis store, bundled model, replay of NASA July 1995 sessions).
run:
	@$(GO) build -o bin/prefetchd ./cmd/prefetchd
	@exec bin/prefetchd $(ARGS)

## test: every test, with the race detector (needs redis-server on PATH).
test:
	$(GO) test $(TESTFLAGS) $(PKGS)

## chaos: the long fault-injection soak against real processes (devbroker,
## redis-server, Redis Cluster, prefetchd); `make test` runs its short set.
.PHONY: chaos
chaos:
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

fmt:
	gofmt -w $$(git ls-files '*.go')

tidy:
	$(GO) mod tidy

clean:
	rm -rf bin/
