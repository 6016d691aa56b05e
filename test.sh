#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, examples, then every unit, integration
# and doc test. Installs what a fresh machine lacks first. Prints each stage's time.
set -euo pipefail
cd "$(dirname "$0")"
stage() {
  local name=$1
  shift
  local start=$SECONDS
  "$@"
  echo "test.sh: $name took $((SECONDS - start)) s" >&2
}
stage setup ./scripts/setup.sh --test
stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --all-targets -- -D warnings
# --examples: the same dependency features as clippy and the tests, so RocksDB (a C++
# build of minutes) is compiled once for them all, not once more for the docs.
RUSTDOCFLAGS="-D warnings" stage doc cargo doc --no-deps --lib --examples --quiet
# The benches compiled in the test profile, which shares the dev build of the
# dependencies (`cargo bench --no-run` would build RocksDB again, optimised: ~15 min).
stage benches cargo test --benches --no-run --quiet
run_examples() {
  for example in examples/*.rs; do
    cargo run --quiet --example "$(basename "$example" .rs)"
  done
}
stage examples run_examples
stage tests cargo test
