# The README's quick start. Each target installs what a fresh Debian machine with Rust
# lacks first (scripts/setup.sh: libclang-dev and g++ for RocksDB; with --test also
# chromium, rustfmt and clippy), then builds. `cargo run` / `cargo test` work as well
# on a machine that has those already.
.PHONY: run test setup install

# The main job: generator source, models on stdout, progress on stderr (release build).
run:
	./scripts/setup.sh
	cargo run --release -- run dataflows/quickstart.toml

# The whole test suite (what CI runs: .ci/run is `make test`).
test:
	./test.sh

# Only the prerequisites, build and test.
setup:
	./scripts/setup.sh --test

# The `tributary` binary into ~/.cargo/bin.
install:
	./scripts/setup.sh
	cargo install --locked --path .
