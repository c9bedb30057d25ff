# Developer commands. `make` (or `make help`) lists them.
#
# Overridable: CARGO (cargo program), CARGO_FLAGS (extra flags for every cargo command, e.g.
# --locked or -j1), TEST_FLAGS (passed to the test binaries after --), PROFILE (debug|release, for
# build and run), and the run settings REDIS_PORT, PG_PORT, ADMIN_TOKEN, READY_TIMEOUT, RUST_LOG
# (see scripts/run-local.sh).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

CARGO       ?= cargo
CARGO_FLAGS ?=
TEST_FLAGS  ?=
PROFILE     ?= debug
BENCH       ?=
export PROFILE CARGO CARGO_FLAGS

ifeq ($(PROFILE),release)
PROFILE_FLAG := --release
else
PROFILE_FLAG :=
endif

.PHONY: help deps build run stop logs test lint fmt bench clean deploy-check k8s-manifests

help: ## List the targets
	@echo "Usage: make <target> [VAR=value ...]"
	@echo
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: CARGO CARGO_FLAGS TEST_FLAGS PROFILE=debug|release REDIS_PORT=6379 PG_PORT=5432 BENCH=<name>"
	@echo "           ADMIN_TOKEN=dev-admin-token READY_TIMEOUT=60 RUST_LOG=info"

deps: ## Install missing Debian packages (redis-server, postgresql, curl, chromium, chromium-driver) with apt-get
	@bash scripts/deps.sh

build: ## Build all service binaries (PROFILE=release for an optimised build)
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins $(PROFILE_FLAG)

run: ## Start Redis, Postgres and the five services in the background; print their URLs
	@bash scripts/run-local.sh

stop: ## Stop the services, and the Redis and Postgres that `make run` started
	@bash scripts/stop-local.sh

logs: ## Follow the logs of `make run` (Ctrl-C to quit; services keep running)
	@shopt -s nullglob; logs=(.run/logs/*.log); \
	if (( $${#logs[@]} == 0 )); then echo "no logs in .run/logs: run \`make run\` first"; exit 1; fi; \
	pg_base=$$(cat .run/pg-base 2>/dev/null || true); \
	if [[ -n "$$pg_base" && "$$pg_base" != "$$PWD/.run" && -f "$$pg_base/logs/postgres.log" ]]; then \
		logs+=("$$pg_base/logs/postgres.log"); fi; \
	exec tail -n 20 -F "$${logs[@]}"

test: deps ## Run all tests: unit, integration (real Redis/Postgres they start themselves), doc
	tools="$$(bash scripts/openapi-tools.sh)"; \
	OPENAPI_TOOLS="$$tools" $(CARGO) test $(CARGO_FLAGS) --workspace --all-targets -- $(TEST_FLAGS)
	$(CARGO) test $(CARGO_FLAGS) --workspace --doc -- $(TEST_FLAGS)

lint: ## Check formatting (rustfmt) and lints (clippy, warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

fmt: ## Format all code with rustfmt
	$(CARGO) fmt --all

bench: ## Benchmarks: criterion micro-benches, then each service's load run (wrk on loopback); BENCH=compare BASE=<rev>: the hot reads of <rev> vs the working tree; see docs/benchmarks.md
	@bash scripts/deps.sh --bench
	@bash scripts/bench/run-all.sh $(BENCH)

clean: stop ## Stop everything, then remove target/ (cargo clean) and .run/
	$(CARGO) clean
	@pg_base=$$(cat .run/pg-base 2>/dev/null || true); \
	if [[ -n "$$pg_base" && "$$pg_base" == /var/tmp/platform-dev-* ]]; then rm -rf "$$pg_base"; echo "removed $$pg_base"; fi
	rm -rf .run

deploy-check: ## Validate Dockerfile, docker-compose.yml, the Helm chart and k8s/ (no Docker engine or cluster needed)
	@bash scripts/deploy-check.sh

k8s-manifests: ## Regenerate k8s/ from the Helm chart (commit the result)
	@bash scripts/deploy-check.sh --write-k8s
