#!/usr/bin/env bash
# Installs what building Tributary needs on a fresh Debian machine with Rust: libclang
# (the rocksdb crate builds RocksDB from source through bindgen) and the toolchain
# components the checks use. Safe to run again; does nothing when all is there.
set -euo pipefail
if ! command -v cargo >/dev/null; then
  echo "setup: cargo is required (Rust 1.95 or newer)" >&2
  exit 1
fi
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  echo "setup: installing libclang-dev (needed to build RocksDB)" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libclang-dev >/dev/null
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component" || true
  fi
done
