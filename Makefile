# k8s-alog: build, test and install. `make help` lists the targets.

PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
TARGET ?= x86_64-unknown-linux-gnu
STATIC_BIN := target/$(TARGET)/release/k8s-alog

.PHONY: help deps build static test test-static bench install clean

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

test: ## Run every test: unit tests, the real-kernel tests (root), then the static binary's
	$(CARGO) test --release -- --test-threads=1
	$(MAKE) test-static

test-static: static ## Run the real-kernel capture tests against the static binary
	K8S_ALOG_BIN=$(CURDIR)/$(STATIC_BIN) $(CARGO) test --release --test capture_http1 -- --test-threads=1

bench: build ## Measure cost and completeness side by side with a no-capture baseline, a floor and tshark (root, ~10 min)
	./bench/run.sh

install: build ## Install the binary (PREFIX, DESTDIR)
	install -D -m 0755 target/release/k8s-alog $(DESTDIR)$(PREFIX)/bin/k8s-alog

clean: ## Remove build output
	$(CARGO) clean
