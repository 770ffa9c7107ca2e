# con — the two commands a newcomer needs: `make run` and `make test`.
# Both are meant to be run as root on a Debian 12 host (they install the
# packages they need and start journald if nothing else does).

CARGO ?= cargo
PROFILE ?= default
CONFIG ?= configs/$(PROFILE)/con.toml
BIN := target/release/con

.PHONY: run test deps journald build lint fmt bench catalog golden clean

## run: build con and run what exists so far — validate the profile and
## verify the event log (the daemon joins here once it exists).
run: deps build
	@echo "==> checking $(CONFIG)"
	$(BIN) config check $(CONFIG)
	@if [ -d "$${CON_ROOT:-}/var/lib/con/events" ]; then \
	  echo "==> verifying the event log"; $(BIN) verify; \
	else echo "==> no event log yet at $${CON_ROOT:-}/var/lib/con/events (the daemon creates it)"; fi

## test: lint, then every unit, integration, crash and journald test.
test: deps journald lint
	$(CARGO) test --workspace --lib --bins --tests --locked
	$(CARGO) test --workspace --doc --locked

deps:
	@./scripts/install-deps.sh

journald:
	@./scripts/ensure-journald.sh

build:
	$(CARGO) build --release --locked -p con

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: the durable-append benchmark (results go in BENCHMARKS.md).
bench:
	$(CARGO) bench -p con-store --bench append

## catalog / golden: regenerate checked-in generated files after a schema change.
catalog:
	CON_BLESS=1 $(CARGO) test -p con-journal --test journald shipped_catalog
golden:
	CON_BLESS=1 $(CARGO) test -p con-event --test golden

clean:
	$(CARGO) clean
