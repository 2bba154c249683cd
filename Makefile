# kube-efvi build entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := bin
GOBIN_TOOLS := $(CURDIR)/$(BIN)/tools
STATICCHECK_VERSION ?= v0.8.2
LDFLAGS := -s -w
CMDS := efvi-agent=./cmd/device-plugin efvi-cni=./cmd/cni eflatency=./cmd/eflatency

.PHONY: help build test test-unit lint bench fuzz clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## static binaries in bin/
	@mkdir -p $(BIN)
	@for c in $(CMDS); do \
		name=$${c%%=*}; pkg=$${c#*=}; \
		echo "go build $$pkg -> $(BIN)/$$name"; \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/$$name $$pkg || exit 1; \
	done

test: ## unit + privileged integration tests (privileged ones skip, saying so, when not root)
	$(GO) test -count=1 -timeout 20m ./...

test-unit: ## tests without the race detector's cost, short mode
	$(GO) test -short -count=1 ./...

lint: ## gofmt check, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@test -x $(GOBIN_TOOLS)/staticcheck || GOBIN=$(GOBIN_TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(GOBIN_TOOLS)/staticcheck ./...

bench: ## benchmarks (root for the data-path ones)
	$(GO) test -run '^$$' -bench . -benchmem -count=1 $$($(GO) list ./... | grep -v '/internal/bench$$')
	$(GO) test -run '^$$' -bench VIPollLoop -benchmem -count=1 ./internal/bench
	@mkdir -p out/bench
	BENCH_OUT=$(CURDIR)/out/bench $(GO) test -run '^$$' -bench Compare -benchtime 1x -count=1 -timeout 20m ./internal/bench
	@cat out/bench/bench.md

clean:
	rm -rf $(BIN)
