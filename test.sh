#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, examples, docs,
# and a build of the benchmarks. Installs what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
cargo test --doc
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
for example in $(ls examples/*.rs 2>/dev/null | xargs -n1 basename | sed 's/\.rs$//'); do
  cargo run --quiet --example "$example"
done
