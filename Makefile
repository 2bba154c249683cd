# kube-efvi build entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := bin
GOBIN_TOOLS := $(CURDIR)/$(BIN)/tools
STATICCHECK_VERSION ?= v0.8.2
LDFLAGS := -s -w
CMDS := efvi-agent=./cmd/device-plugin efvi-cni=./cmd/cni efvi-install=./cmd/efvi-install efvictl=./cmd/efvictl eflatency=./cmd/eflatency efsink=./cmd/efsink efsend=./cmd/efsend

.PHONY: help build test test-race test-unit lint bench fuzz clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## static binaries in bin/
	@mkdir -p $(BIN)
	@for c in $(CMDS); do \
		name=$${c%%=*}; pkg=$${c#*=}; \
		echo "go build $$pkg -> $(BIN)/$$name"; \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/$$name $$pkg || exit 1; \
	done

test: ## unit + privileged integration tests (privileged ones skip, saying so, when not root); RACE=1 adds -race
	$(GO) test -count=1 -timeout 20m $(if $(filter 1,$(RACE)),-race) ./...

test-race: ## make test with the race detector (CI)
	$(MAKE) test RACE=1

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
	set -o pipefail; $(GO) test -run '^$$' -bench ProgramCost -benchtime 1x -count=1 -v ./pkg/dataplane | tee out/bench/programs.txt
	set -o pipefail; { $(GO) test -run '^$$' -bench Allocate -benchtime 2000x -count=1 ./pkg/deviceplugin && \
		$(GO) test -run '^$$' -bench KubeletReregister -benchtime 50x -count=1 ./internal/bench && \
		{ $(GO) test -run '^$$' -bench 'AddFiltersLive|AgentAdd' -benchtime 100x -count=1 ./cmd/cni || echo "# CNI ADD benchmark failed: reported as not measured"; }; } \
		| tee out/bench/controlplane.txt
	BENCH_OUT=$(CURDIR)/out/bench $(GO) test -run '^$$' -bench Compare -benchtime 1x -count=1 -timeout 20m ./internal/bench
	@cat out/bench/bench.md
	@echo "chart: out/bench/bench.png; control plane: out/bench/controlplane.md"

clean:
	rm -rf $(BIN)

# ---- images, chart, e2e cluster, demo (issue 6) ----
HELM ?= $(GOBIN_TOOLS)/helm
HELM_VERSION ?= v3.16.4
MANIFESTS_NS ?= kube-efvi
.PHONY: images manifests chart-lint e2e-up e2e-down e2e soak demo demo-down

$(HELM):
	GOBIN=$(GOBIN_TOOLS) CGO_ENABLED=0 GOFLAGS=-mod=mod $(GO) install -ldflags '-s -w' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

images: build ## agent, example-app and pause images as tarballs in out/images (no Docker)
	hack/images.sh

chart-lint: $(HELM) ## helm lint --strict, plus schema checks of bad values
	$(HELM) lint --strict charts/kube-efvi
	$(HELM) lint --strict charts/kube-efvi -f e2e/values-e2e.yaml
	@! $(HELM) template x charts/kube-efvi --set-json 'config.pools=[{"name":"p","backend":"nope"}]' >/dev/null 2>&1 || { echo "schema accepted a bad backend"; exit 1; }

manifests: $(HELM) ## render the chart into manifests/kube-efvi.yaml
	{ echo "# Rendered from charts/kube-efvi by 'make manifests' (default values). Do not edit."; \
	  printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' $(MANIFESTS_NS); \
	  $(HELM) template kube-efvi charts/kube-efvi --namespace $(MANIFESTS_NS); } > manifests/kube-efvi.yaml.tmp
	mv manifests/kube-efvi.yaml.tmp manifests/kube-efvi.yaml

e2e-up: build ## local Kubernetes + fabric netns + images + helm install (root)
	hack/e2e-up.sh

e2e-down: ## uninstall, stop the local cluster, remove the fabric (root)
	hack/e2e-down.sh

e2e: ## e2e tests against the cluster from e2e-up (go test -tags e2e ./e2e/...)
	hack/e2e-test.sh

soak: ## soak e2e tests against the e2e-up cluster; counts: SOAK_AGENT_RESTARTS, SOAK_CHURN_PODS, SOAK_CHURN_ROUNDS, SOAK_AGENT_DOWN
	E2E_TAGS=e2e,soak E2E_TEST_ARGS="-run TestSoak $(E2E_TEST_ARGS)" hack/e2e-test.sh

demo: build ## main job: local cluster + chart + a VI pong pod, pinged from the fabric: RTT table
	hack/demo.sh

demo-down: ## remove the demo pod, then e2e-down
	hack/demo.sh down

# ---- hardware path (issues 11, 12): libciul behind -tags onload ----
# ONLOAD_PREFIX names an Onload installation (include/etherfabric/*.h,
# lib/libciul.so), e.g. /usr on a node with Onload installed. Nothing of
# Onload is built or vendored here; without ONLOAD_PREFIX the tagged part
# skips, saying so.
ONLOAD_PREFIX ?=
ONLOAD_ENV = CGO_ENABLED=1 CGO_CFLAGS="-I$(ONLOAD_PREFIX)/include" CGO_LDFLAGS="-L$(ONLOAD_PREFIX)/lib -L$(ONLOAD_PREFIX)/lib64 -Wl,-rpath,$(ONLOAD_PREFIX)/lib -Wl,-rpath,$(ONLOAD_PREFIX)/lib64"
HW_SDK_PKGS := ./pkg/efvi/
HW_TOOLS := ./cmd/efsink ./cmd/efsend ./cmd/eflatency
.PHONY: hw-test hw-test-agent hw-test-sdk build-onload

hw-test: hw-test-agent hw-test-sdk ## hardware-path tests (no root): always the pure-Go parts; with ONLOAD_PREFIX also the onload-tagged build, vet, tests, libciul's own client, wrapper benchmark

hw-test-agent:
	ONLOAD_PREFIX="$(ONLOAD_PREFIX)" $(GO) test -count=1 -v -run 'TestClusterHandshake|TestHardwarePool' ./pkg/cluster ./pkg/hwvi/...
	@if [ -z "$(ONLOAD_PREFIX)" ]; then \
		echo "SKIP hw-test-agent onload part: ONLOAD_PREFIX is not set (an Onload installation: include/etherfabric/*.h, lib/libciul.so): the onload-tagged agent build/vet and libciul's ef_pd_alloc_by_name() against the agent did not run"; \
	else \
		set -e; \
		$(ONLOAD_ENV) $(GO) build -tags onload ./...; \
		$(ONLOAD_ENV) $(GO) vet -tags onload ./...; \
		echo "hw-test-agent: onload-tagged agent, SDK and tools build and vet clean against $(ONLOAD_PREFIX)"; \
	fi

hw-test-sdk:
	$(GO) test -v -count=1 -run 'TestHardwareSDK' $(HW_SDK_PKGS)
	@if [ -z "$(ONLOAD_PREFIX)" ]; then \
		echo "SKIP hw-test-sdk onload part: ONLOAD_PREFIX is not set: the -tags onload SDK tests and wrapper benchmark did not run"; \
	else \
		set -e; \
		$(ONLOAD_ENV) $(GO) test -tags onload -v -count=1 -run 'TestHardwareSDK' -bench 'HardwareSDK' -benchmem $(HW_SDK_PKGS); \
	fi

build-onload: ## the agent and the ef tools with the hardware backend in bin/onload/ (needs ONLOAD_PREFIX and cgo)
	@test -n "$(ONLOAD_PREFIX)" || { echo "build-onload: set ONLOAD_PREFIX to the node's Onload installation (include/etherfabric, lib/libciul.so), e.g. /usr"; exit 2; }
	@mkdir -p $(BIN)/onload
	$(ONLOAD_ENV) $(GO) build -tags onload -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/onload/efvi-agent ./cmd/device-plugin
	for c in efsink efsend eflatency; do $(ONLOAD_ENV) $(GO) build -tags onload -trimpath -o $(BIN)/onload/$$c ./cmd/$$c || exit 1; done

# ---- kind e2e: two nodes, Kubernetes 1.34, offline-capable (issue 15) ----
.PHONY: kind-deps kind-up kind-e2e kind-down
kind-deps: ## build once per version into /var/cache/kube-efvi what kind needs offline (Kubernetes, etcd, coredns, kind, helm, CNI)
	hack/kind-deps.sh all

kind-up: build ## two-node kind cluster (kindest/node, or a node image built here), fabric, images, chart (root)
	hack/kind.sh up

kind-e2e: ## the e2e suite, TestCrossNode* included, against the kind cluster
	hack/kind.sh test

kind-down: ## delete the kind cluster, fabric and private Docker; check the host is left clean
	hack/kind.sh down
