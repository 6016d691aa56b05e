#!/usr/bin/env bash
# How fast a followed file's backlog is read: `tributary run --source csv:FILE,follow`
# on a generated file, timed from the start of the process until /healthz counts every
# record (the source never ends, so the run is killed then). Three configurations: one
# worker, two workers, one worker with --checkpoint (every batch written to RocksDB).
#
#   bash benches/follow/run.sh            # ROWS=2000000 by default
#
# Settings: TRIBUTARY_BIN (a binary to use instead of `cargo build --release`), ROWS.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
rows="${ROWS:-2000000}"
bin="${TRIBUTARY_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
  bin="$root/target/release/tributary"
fi
work="$(mktemp -d)"
trap 'kill -9 "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" gen --rows "$rows" --keys 16 --features 8 --digits 9 --out "$work/data.csv" 2>/dev/null
records() {
  curl -s "$1/healthz" | python3 -c 'import sys, json; print(json.load(sys.stdin)["records"])' \
    2>/dev/null || echo 0
}
measure() {
  local name="$1"; shift
  rm -rf "$work/ckpt"
  local start end addr
  start=$(date +%s.%N)
  "$bin" run -q --source "csv:$work/data.csv,follow" --serve 127.0.0.1:0 --features x0..x7 \
    --window sliding:60s/10s --out /dev/null "$@" 2>"$work/err" &
  pid=$!
  until grep -q "serving on" "$work/err"; do sleep 0.01; done
  addr=$(grep -o "http://[0-9.:]*" "$work/err")
  until [ "$(records "$addr")" = "$rows" ]; do sleep 0.02; done
  end=$(date +%s.%N)
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "d = $end - $start; print(f'{\"$name\":<16} {$rows:>10} records  {d:7.3f} s  {$rows / d / 1e6:6.2f} M records/s')"
}
echo "followed file, $rows records of d = 8 (9 significant digits), backlog read from the start"
measure "-w 1"
measure "-w 2" -w 2
measure "-w 1 checkpoint" --checkpoint "$work/ckpt"
