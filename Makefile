# Same targets for everyone; each is a thin wrapper over scripts/.
.PHONY: test demo bench lint fmt soak
test:
	./scripts/test.sh
demo:
	./scripts/demo.sh
bench:
	./scripts/bench.sh
soak:
	. scripts/env.sh && build && $$PY -m pytest -m soak tests
fmt:
	cargo fmt --all && .venv/bin/ruff format python tests && .venv/bin/ruff check --fix python tests
lint:
	cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings && .venv/bin/ruff check python tests
