# wschat developer entry points. `make test` is THE test command (CI too).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# Every module of go.work; ./integration last, being the slowest.
ALL_MODULES := $(shell go work edit -json | sed -n 's/.*"DiskPath": "\(.*\)".*/\1/p')
MODULES := $(filter-out ./integration,$(ALL_MODULES)) $(filter ./integration,$(ALL_MODULES))
# The container tests build images and start stacks: allow for a cold start.
TEST_TIMEOUT ?= 20m

STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(shell go env GOPATH)/bin/staticcheck

.PHONY: help images project-images compose-plugin up up-nats down ps logs test test-faults-long vet lint fmt fuzz demo-screenshot bench bench-peers bench-scaling bench-go

help:
	@echo 'make images          base images without a registry, recorded in .env for Compose (idempotent)'
	@echo 'make project-images  wschat/ws-relayer, wschat/ws-user, wschat/nginx, wschat/nats'
	@echo 'make compose-plugin  install the Compose v2 plugin (docker compose) from the Go module proxy'
	@echo 'make up              build and start the stack, 3 ws-user replicas, http://localhost:$${WSCHAT_PORT:-8080} (a random RELAY_SECRET goes to .env when it has none)'
	@echo 'make up-nats         the same with the relay tier on a three-node NATS JetStream cluster (BUS=nats, --profile nats)'
	@echo 'make down            stop the stack (WSCHAT_DOWN_VOLUMES=1 drops the data volume)'
	@echo 'make test            gofmt, go vet, staticcheck and go test -race of every module, containers and browser included, then make fuzz'
	@echo 'make fuzz            each fuzz target of an untrusted-input decoder for FUZZTIME (default 5s)'
	@echo 'make test-faults-long the fault suite with its long scenarios, 3 runs each (docs/reliability.md; ~10 min)'
	@echo 'make demo-screenshot regenerate docs/demo.png (two browser tabs on two replicas, through nginx)'
	@echo 'make bench           the load suite of docs/benchmarks.md (the write floor, W1-W5 and the W4b burst, both protocols; ~11 min)'
	@echo 'make bench-peers     the same workloads against wschat and Centrifugo v6 + Redis, side by side (~7 min)'
	@echo 'make bench-scaling   the relay tiers side by side: the relayer, NATS JetStream R3 and R1 (docs/scaling.md; ~14 min)'
	@echo 'make bench-go        the Go benchmarks (encode, decode, fan-out, write batching, relay batching)'

images:
	deploy/offline-images.sh --dotenv

compose-plugin:
	deploy/compose-plugin.sh

project-images:
	deploy/images.sh

up:
	deploy/stack.sh up

# BUS=nats docker compose --profile nats up --scale ws-user=3, built and
# waited for like make up.
up-nats:
	deploy/stack.sh up-nats

down:
	deploy/stack.sh down

ps:
	deploy/stack.sh ps

logs:
	deploy/stack.sh logs --tail=100 -f

vet:
	@for m in $(MODULES); do echo "== go vet $$m"; (cd "$$m" && go vet ./...); done

$(STATICCHECK):
	go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: $(STATICCHECK)
	@for m in $(MODULES); do echo "== staticcheck $$m"; (cd "$$m" && $(STATICCHECK) ./...); done

# Every module is tested even when an earlier one fails; the exit status
# reports any failure.
test: vet lint
	@test -z "$$(gofmt -l $(MODULES))" || { echo 'gofmt needed:'; gofmt -l $(MODULES); exit 1; }
	@failed=; for m in $(MODULES); do echo "== go test $$m"; \
		(cd "$$m" && go test -race -count=1 -timeout $(TEST_TIMEOUT) ./...) || failed="$$failed $$m"; done; \
		if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi
	@$(MAKE) --no-print-directory fuzz

# The decoders of untrusted bytes, as module:package:target:budget (go test
# -fuzz takes one target per run). Their committed corpora (testdata/fuzz)
# run with every go test; this explores beyond them briefly. A failing
# input is written to the package's testdata/fuzz: commit it with the fix.
# A budget is a count of executions, not a duration: Go 1.26's fuzz
# coordinator can fail a target with a bare "context deadline exceeded"
# when a duration ends while a worker is mid-call (go.dev/issue/75804,
# fixed in Go 1.27); a count has no deadline to race. Each is a few
# seconds here (the replay target writes files: ~1,200 execs/s). FUZZTIME
# overrides them all.
FUZZTIME ?=
FUZZ_TARGETS := \
	services/protocol:.:FuzzDecode:200000x \
	services/protocol:.:FuzzDecodeFastMatchesEncodingJSON:200000x \
	services/protocol:./link:FuzzSplit:200000x \
	services/protocol:./link:FuzzDecodeFastMatchesEncodingJSON:200000x \
	services/relayer:./internal/store:FuzzDecodeRecord:100000x \
	services/relayer:./internal/store:FuzzReplay:8000x

fuzz:
	@for t in $(FUZZ_TARGETS); do IFS=: read -r dir pkg name budget <<< "$$t"; budget=$${FUZZTIME:-$$budget}; \
		echo "== fuzz $$name in $$dir/$$pkg for $$budget"; \
		(cd "$$dir" && go test -run '^$$' -fuzz "^$$name\$$" -fuzztime "$$budget" "$$pkg") || exit 1; done

fmt:
	gofmt -w $(MODULES)

# The fast fault scenarios run in `make test`; this adds the long ones (a
# 40 s relayer freeze) and repeats each (WSCHAT_FAULT_RUNS, default 3).
test-faults-long:
	cd integration && WSCHAT_FAULT_LONG=1 go test -race -count=1 -timeout 90m -v -run TestFaults ./fault/

demo-screenshot:
	cd integration && WSCHAT_DEMO_PNG=$(CURDIR)/docs/demo.png go test -count=1 -run TestBrowserThroughNginx ./containers/

bench:
	integration/load/bench-all.sh

bench-peers:
	integration/load/bench-peers.sh

bench-scaling:
	integration/load/bench-scaling.sh

bench-go:
	@for m in ./services/protocol ./services/reclaim ./services/settings ./services/user ./services/relayer; do \
		(cd "$$m" && go test -run '^$$' -bench . -benchmem ./...) | grep -E '^(Benchmark|ok|FAIL)'; done
