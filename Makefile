# agent-assembly. `make help` lists the targets.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/agent-assembly/agent-assembly/gateway/server.Version=$(VERSION)
BENCH    ?= .
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: help build run test e2e test-unit fuzz generate generate-bpf check-generate lint bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build aa-gateway and aasm into bin/
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

run: build ## start the gateway for development: SQLite under ./data, examples/policies, gRPC :50051, REST :7700, agents trusted by name (--agent-auth off, loopback only)
	./bin/aa-gateway --agent-auth off

test: ## the full suite: starts throwaway PostgreSQL/Redis when available, vet, race tests, bounded fuzzing
	scripts/test.sh

e2e: ## the end-to-end story: two gateways on PostgreSQL+Redis, aa-runtime, the example agent, aasm (starts the databases)
	scripts/e2e.sh

test-unit: ## fast in-process tests only (no services, no race detector)
	$(GO) test ./...

fuzz: ## fuzz every target for FUZZTIME (default 30s each)
	FUZZTIME=$${FUZZTIME:-30s} scripts/fuzz.sh

generate: generate-bpf ## regenerate protobuf/gRPC/grpc-gateway/OpenAPI code (installs protoc from Debian if missing)
	scripts/genproto.sh

generate-bpf: ## rebuild the eBPF object and bpf2go bindings under bpf/ (installs clang-14, llvm-14, libbpf-dev from Debian if missing)
	bpf/generate.sh

check-generate: generate ## fail if generated code is not what `make generate` produces
	git diff --exit-code -- api/ || { echo "generated code is stale: run make generate and commit" >&2; exit 1; }
	git diff --exit-code -- bpf/ || { echo "generated eBPF code is stale: run make generate and commit" >&2; exit 1; }

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench: ## benchmarks with allocations (BENCH=regex to select)
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchmem ./...

clean: ## remove build output and local data
	rm -rf bin data
