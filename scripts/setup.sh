#!/usr/bin/env bash
# Installs what building Tributary needs on a fresh Debian machine with Rust: the
# toolchain components used by the checks. Safe to run again.
set -euo pipefail
if ! command -v cargo >/dev/null; then
  echo "setup: cargo is required (Rust 1.95 or newer)" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component" || true
  fi
done
