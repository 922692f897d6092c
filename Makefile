# wschat developer entry points. `make test` is THE test command (CI too).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# Every module of go.work; ./integration last, being the slowest.
ALL_MODULES := $(shell go work edit -json | sed -n 's/.*"DiskPath": "\(.*\)".*/\1/p')
MODULES := $(filter-out ./integration,$(ALL_MODULES)) $(filter ./integration,$(ALL_MODULES))
# The container tests build images and start stacks: allow for a cold start.
TEST_TIMEOUT ?= 20m

.PHONY: help images project-images up down ps logs test vet fmt

help:
	@echo 'make images          base images without a registry (idempotent)'
	@echo 'make project-images  wschat/ws-relayer, wschat/ws-user, wschat/nginx'
	@echo 'make up              build and start the stack, 3 ws-user replicas, http://localhost:$${WSCHAT_PORT:-8080}'
	@echo 'make down            stop the stack (WSCHAT_DOWN_VOLUMES=1 drops the data volume)'
	@echo 'make test            go vet + go test -race of every module, container tests included'

images:
	deploy/offline-images.sh

project-images:
	deploy/images.sh

up:
	deploy/stack.sh up

down:
	deploy/stack.sh down

ps:
	deploy/stack.sh ps

logs:
	deploy/stack.sh logs --tail=100 -f

vet:
	@for m in $(MODULES); do echo "== go vet $$m"; (cd "$$m" && go vet ./...); done

# Every module is tested even when an earlier one fails; the exit status
# reports any failure.
test: vet
	@test -z "$$(gofmt -l $(MODULES))" || { echo 'gofmt needed:'; gofmt -l $(MODULES); exit 1; }
	@failed=; for m in $(MODULES); do echo "== go test $$m"; \
		(cd "$$m" && go test -race -count=1 -timeout $(TEST_TIMEOUT) ./...) || failed="$$failed $$m"; done; \
		if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi

fmt:
	gofmt -w $(MODULES)
