# con — the two commands a newcomer needs: `make run` and `make test`.
# Both are meant to be run as root on a Debian 12 host (they install the
# packages they need and start journald if nothing else does).

CARGO ?= cargo
PROFILE ?= default
CONFIG ?= configs/$(PROFILE)/con.toml
BIN := target/release/con

.PHONY: run task test e2e image up down deps journald build lint fmt bench catalog golden corpus clean

## run: build con, install it as /usr/local/bin/con (the path units and
## sudoers name), bootstrap the profile onto this host (users, groups,
## directories, ACLs, sudoers, AGENTS.md, units, nftables egress), verify the
## event log if there is one, and run the daemon in the foreground (Ctrl-C
## stops it cleanly). Under a systemd PID 1 bootstrap has enabled and started
## the units, con-daemon.service runs the daemon instead, and `make run` says
## so and returns.
run: deps build
	@echo "==> checking $(CONFIG)"
	$(BIN) config check $(CONFIG)
	install -m 0755 $(BIN) /usr/local/bin/con
	@echo "==> bootstrapping the $(PROFILE) profile onto this host"
	/usr/local/bin/con bootstrap --profile configs/$(PROFILE)
	@if [ -d "$${CON_ROOT:-}/var/lib/con/events" ]; then \
	  echo "==> verifying the event log"; $(BIN) verify; \
	else echo "==> no event log yet: the daemon creates it"; fi
	@if { [ -z "$${CON_ROOT:-}" ] || [ "$${CON_ROOT}" = / ]; } \
	  && systemctl is-active --quiet con-daemon.service 2>/dev/null; then \
	  echo "==> con-daemon.service runs the daemon (systemd is PID 1: bootstrap enabled and started the units)"; \
	  echo "    try: con task \"hello\", con status, con logs -f; the daemon's own log: journalctl -u con-daemon -f"; \
	else \
	  echo "==> starting the daemon; in another shell: con task \"hello\", con status, con logs -f"; \
	  ./scripts/ensure-journald.sh && exec /usr/local/bin/con daemon; \
	fi

## task: drop MSG into the outer inbox of the running conspiracy (`make run`)
## and print the answer when it comes: make task MSG="How full is /var?"
task:
	@test -n "$(MSG)" || { echo 'usage: make task MSG="..."' >&2; exit 2; }
	/usr/local/bin/con task --wait "$(MSG)"

## test: lint, then every unit, integration, crash and journald test, then
## the end-to-end suite.
test: deps journald lint
	$(CARGO) test --workspace --lib --bins --tests --locked
	$(CARGO) test --workspace --doc --locked
	@$(MAKE) --no-print-directory e2e

## e2e: the end-to-end suite under a real systemd (root): systemd-nspawn
## containers booted from a cached debootstrap image (tests/e2e/README.md).
e2e: deps
	$(CARGO) build --locked -p con -p con-llm-script
	CON_E2E=1 $(CARGO) test --locked --no-fail-fast -p con-e2e -- --test-threads=1

## image / up / down: con under a real systemd without provisioning this
## host. `make up` boots a systemd-nspawn container from the e2e image
## (built by `make image`, cached) with this checkout's con, bootstraps
## PROFILE in it and leaves it running; it prints how to get a shell and
## drop a task. `make down` stops and removes it. Root; private network.
image: deps
	$(CARGO) build --locked -p con-e2e --bin con-machine
	target/debug/con-machine image

up: deps
	$(CARGO) build --locked -p con -p con-e2e --bin con-machine
	target/debug/con-machine up $(PROFILE)

down:
	$(CARGO) build --locked -p con-e2e --bin con-machine
	target/debug/con-machine down

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

## bench: the benchmarks (results go in BENCHMARKS.md); the daemon one needs root.
bench:
	$(CARGO) bench -p con-store --bench append
	$(CARGO) bench -p con --bench daemon
	$(CARGO) bench -p con --bench runs

## catalog / golden: regenerate checked-in generated files after a schema change.
catalog:
	CON_BLESS=1 $(CARGO) test -p con-journal --test journald shipped_catalog
golden:
	CON_BLESS=1 $(CARGO) test -p con-event --test golden

## corpus: record a new entry of the replay/ corpus for the current event
## format with the real daemon and scripted models (replay/README.md);
## CON_CORPUS_NAME=<name> names it (default: delegation). Never replaces one.
corpus: deps journald
	$(CARGO) test --locked -p con --test it record_a_corpus_entry -- --ignored --nocapture

clean:
	$(CARGO) clean
