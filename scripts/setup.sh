#!/usr/bin/env bash
# Installs what building Tributary needs on a fresh Debian machine with Rust, and with
# --test what its tests need too. Safe to run again: it asks dpkg and rustup what is
# there and installs only what is missing (one `apt-get update` and one `apt-get install`
# at most). `make run` and `make test` run it before building.
#
#   build (always): libclang-dev (the rocksdb crate builds RocksDB from source through
#                   bindgen, which loads libclang) and g++ (RocksDB is C++)
#   --test:         chromium (the browser test of the dashboard, tests/dashboard.rs) and
#                   the rustfmt and clippy components (test.sh's checks)
#
# Exit status: 0 when everything is there afterwards, 1 with a message naming what is
# missing otherwise (no cargo, no apt-get, an install that failed).
set -euo pipefail

test_tools=0
for arg in "$@"; do
  case "$arg" in
    --test) test_tools=1 ;;
    -h | --help)
      sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "setup: unknown argument $arg (only --test)" >&2
      exit 1
      ;;
  esac
done

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is required (Rust 1.95 or newer, from rustup)" >&2
  exit 1
fi

packages=(libclang-dev g++)
[ "$test_tools" = 1 ] && packages+=(chromium)

installed() {
  # dpkg -s exits 0 for a package that is known, even one removed with its config kept:
  # only "install ok installed" counts.
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

missing=()
for package in "${packages[@]}"; do
  installed "$package" || missing+=("$package")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "setup: missing ${missing[*]} and there is no apt-get: install them with this" \
      "system's package manager (libclang-dev is libclang's development files)" >&2
    exit 1
  fi
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
  fi
  echo "setup: installing ${missing[*]} (apt-get; libclang-dev and g++ build RocksDB," \
    "chromium runs the dashboard's browser test)" >&2
  "${SUDO[@]}" apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null; then
    echo "setup: apt-get install ${missing[*]} failed" >&2
    exit 1
  fi
  for package in "${missing[@]}"; do
    if ! installed "$package"; then
      echo "setup: $package is still not installed after apt-get install" >&2
      exit 1
    fi
  done
fi

if [ "$test_tools" = 1 ]; then
  if command -v rustup >/dev/null; then
    have=$(rustup component list --installed 2>/dev/null || true)
    add=()
    for component in rustfmt clippy; do
      grep -q "^$component" <<<"$have" || add+=("$component")
    done
    if [ "${#add[@]}" -gt 0 ]; then
      echo "setup: adding the toolchain components ${add[*]}" >&2
      rustup component add "${add[@]}"
    fi
  else
    for tool in fmt clippy; do
      if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "setup: cargo $tool is missing and there is no rustup to add it" >&2
        exit 1
      fi
    done
  fi
fi
