# k8s-alog: build, test and install. `make help` lists the targets.

PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
TARGET ?= x86_64-unknown-linux-gnu
STATIC_BIN := target/$(TARGET)/release/k8s-alog

.PHONY: help deps build static test test-static test-kernels fuzz soak bench bench-top install clean generate demo

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## Install the Debian packages and tools the build and tests need (root)
	./scripts/deps.sh

build: ## Build the release binary (target/release/k8s-alog)
	$(CARGO) build --release

static: ## Build one statically linked binary ($(STATIC_BIN))
	LIBBPF_SYS_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu \
	RUSTFLAGS="-C target-feature=+crt-static" \
	$(CARGO) build --release --target $(TARGET) --features static
	@ldd $(STATIC_BIN) 2>&1 | grep -q "statically linked" || ldd $(STATIC_BIN) 2>&1 | grep -q "not a dynamic executable"
	@ls -l $(STATIC_BIN)

test: ## Run every test: unit tests, the real-kernel tests (root), the fuzzing with overflow checks, the static binary's, then the capture tests on other kernels in QEMU
	$(CARGO) test --release -- --test-threads=1
	$(MAKE) fuzz
	$(MAKE) test-static
	$(MAKE) test-kernels

test-static: static ## Run the real-kernel capture tests and the shipping checks against the static binary
	K8S_ALOG_BIN=$(CURDIR)/$(STATIC_BIN) $(CARGO) test --release --test capture_http1 -- --test-threads=1
	K8S_ALOG_BIN=$(CURDIR)/$(STATIC_BIN) $(CARGO) test --release --test ship -- --test-threads=1

# Seconds each fuzz test runs in `make fuzz` (the suite's own run is shorter by default).
FUZZ_SECONDS ?= 15

fuzz: ## Run the fuzz tests with arithmetic overflow checked, FUZZ_SECONDS each (e.g. `make fuzz FUZZ_SECONDS=600`)
	K8S_ALOG_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --profile fuzz --test fuzz_parsers --test fuzz_inputs --test fuzz_tls -- --test-threads=1 --nocapture

soak: ## Run record for 10 minutes while processes, connections and TLS binaries churn; RSS, fds and probes must stay flat (root; K8S_ALOG_SOAK_SECONDS)
	$(CARGO) test --release --test soak -- --ignored --nocapture --test-threads=1

# Kernel configurations for test-kernels (see scripts/vm/test-kernels.sh), e.g.
# `make test-kernels KERNELS="6.12 6.1,lockdown,hooks=syscall:http1"`; empty: the CI matrix.
KERNELS ?=

test-kernels: static ## Capture tests on this kernel's syscall rung, then on Debian's 6.1 and 6.12 kernels booted in QEMU, every rung included (root, ~35 min)
	$(CARGO) test --release --no-run --test capture_http1 --test capture_http2 --test capture_tls
	K8S_ALOG_HOOKS=syscall K8S_ALOG_BIN=$(CURDIR)/$(STATIC_BIN) $(CARGO) test --release --test capture_http1 -- --test-threads=1
	K8S_ALOG_BIN=$(CURDIR)/$(STATIC_BIN) ./scripts/vm/test-kernels.sh $(KERNELS)

bench: build ## Measure cost and completeness of each hook rung side by side with a no-capture baseline, each rung's same-hook floor and tshark (root, ~12 min)
	./bench/run.sh

bench-top: ## Measure top's responsiveness with 5,000 live connections and ~20k requests/s on the simulated node (root, ~2 min)
	$(CARGO) test --release --test top_tmux top_under_load -- --ignored --nocapture --test-threads=1

# What `make install` installs: the static binary if built (`make static`), else the
# release build; INSTALL_BIN=path overrides.
INSTALL_BIN ?= $(if $(wildcard $(STATIC_BIN)),$(STATIC_BIN),target/release/k8s-alog)
MANPAGES := $(wildcard man/*.1)

install: ## Install binary, completions (bash, zsh, fish) and man pages (PREFIX, DESTDIR)
	@test -x $(INSTALL_BIN) || $(MAKE) build
	install -D -m 0755 $(INSTALL_BIN) $(DESTDIR)$(PREFIX)/bin/k8s-alog
	install -D -m 0644 completions/k8s-alog.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/k8s-alog
	install -D -m 0644 completions/_k8s-alog $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_k8s-alog
	install -D -m 0644 completions/k8s-alog.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/k8s-alog.fish
	install -d $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0644 $(MANPAGES) $(DESTDIR)$(PREFIX)/share/man/man1/

generate: build ## Regenerate completions/ and man/ from the CLI (commit the result)
	rm -f completions/* man/*
	./target/release/k8s-alog generate --out-dir .

# The command `make demo` runs on the simulated node's traffic (e.g. TOOL_CMD="record --out -").
TOOL_CMD ?= top

demo: build ## A simulated Kubernetes node with realistic traffic, and k8s-alog on it (root; Ctrl-C ends)
	./scripts/demo.sh ./target/release/k8s-alog $(TOOL_CMD)

clean: ## Remove build output
	$(CARGO) clean
