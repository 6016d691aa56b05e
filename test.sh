#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, examples, then every unit, integration
# and doc test. Installs what a fresh machine lacks first.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# --examples: the same dependency features as clippy and the tests, so RocksDB (a C++
# build of minutes) is compiled once for them all, not once more for the docs.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --examples --quiet
cargo bench --no-run --quiet
for example in examples/*.rs; do
  cargo run --quiet --example "$(basename "$example" .rs)"
done
cargo test
