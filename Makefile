# popek: two entry points, `make scan` and `make test` (see README.md).
CARGO ?= cargo
POPEK := target/release/popek

.PHONY: scan test deps build lint bench clean

deps:
	@scripts/ensure-deps.sh

# What the tests need besides the build: a headless Chromium, in which the
# HTML report's test renders the page (tests/html.rs).
.PHONY: test-deps
test-deps:
	@scripts/ensure-deps.sh --test
test: test-deps

build: deps
	$(CARGO) build --release --locked

# The full default scan on Unicorn: every catalog instruction in 16-, 32-
# and 64-bit mode with umip=off and umip=on, written to reports/.
scan: build
	$(POPEK) scan --engine unicorn --out reports --format csv,json,md,html

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

# After the tests popek checks itself: the full default scan against the
# kept baseline, so a change of Unicorn or the classifier cannot pass
# unnoticed (a commit that changes a verdict regenerates it with make scan).
test: lint
	$(CARGO) test --release --locked --workspace --lib --bins --tests
	$(CARGO) build --release --locked
	$(POPEK) check --engine unicorn --baseline reports/popek-unicorn.json

bench: deps
	$(CARGO) bench --locked -p analyzer

clean:
	$(CARGO) clean
