#!/usr/bin/env bash
# Side-by-side comparison of Tributary with the Python peers of shared/peers (bytewax,
# pathway, river, plain numpy recompute) on the same generated data, in one run.
#
#   bash benches/compare/run.sh            # from anywhere; see the settings below
#
# It builds Tributary (`cargo build --release`) unless TRIBUTARY_BIN is set, installs the
# peers on demand into a venv under ${TMPDIR:-/tmp} (never needed by the test suite),
# generates the data with the peers' gen.py, computes the numpy lstsq oracle
# (reference.py), runs every engine/config under the peers' measure.py (wall clock and
# /usr/bin/time -v peak RSS), checks every output with compare.py, and writes
# results.md, results.json and peers.svg into the output folder.
#
# Settings (environment variables):
#   TRIBUTARY_BIN   a tributary binary to use instead of building one
#   PEERS_DIR       the peer harness [<project root>/../shared/peers]
#   COMPARE_WORK    venv + data cache [${TMPDIR:-/tmp}/tributary-peers]
#   COMPARE_OUT     output folder [$COMPARE_WORK/run-<date>]
#   N               records for the side-by-side runs [1000000]
#   N_BIG           records for the Tributary-only, start-up-amortised runs [10000000]; 0 skips
#   PEERS           which peers [numpy bytewax pathway river]
#   PEER_TIMEOUT    seconds per engine run before it is killed [900]
#   MAX_RSS_MIB     kill a run whose process-tree RSS exceeds this [19000]
#   REPEATS         runs of every config (the tables use the median) [1]
#   PW_COLS=1       also run pathway's memory-hungry "cols" variant (skipped by default, as
#                   in the peers README: it does not fit in 24 GiB at 1M)
#   SKIP_INSTALL=1  do not pip-install; use what the venv has
#   DOC_CMD         the command line to quote in results.md [the default invocation]
#
# Many-keys mode (issue 15): KEYS="16 1000 10000" runs, instead of the 16-key suite above,
# one generated file per key count (gen.py --k K, same N and seed) through Tributary -w 1 and
# -w 2, numpy and bytewax (1 worker), each checked against its own lstsq oracle, and writes
# results_keys.md, results_keys.json and keys.svg (records/s and peak RSS against keys).
#   KEYS            key counts, e.g. "10000" or "16 1000 10000" [unset: the suite above]
#   WINDOW_MS       window length in ms, many-keys mode only [600000]
#   SLIDE_MS        window slide in ms, many-keys mode only [100000]. With one record per ms,
#                   a (key, window) holds about WINDOW_MS / K records: 60 at 10 000 keys
#   KEYS_PEERS      peers of the many-keys mode [numpy bytewax]; bytewax runs as bytewax_w1
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
WORK=${COMPARE_WORK:-${TMPDIR:-/tmp}/tributary-peers}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${COMPARE_OUT:-$WORK/run-$STAMP}
N=${N:-1000000}
N_BIG=${N_BIG:-10000000}
PEERS=${PEERS:-numpy bytewax pathway river}
PEER_TIMEOUT=${PEER_TIMEOUT:-900}
MAX_RSS_MIB=${MAX_RSS_MIB:-19000}
REPEATS=${REPEATS:-1}
PW_COLS=${PW_COLS:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
DOC_CMD=${DOC_CMD:-bash benches/compare/run.sh}
KEYS=${KEYS:-}
if [ -n "$KEYS" ]; then
  WINDOW_MS=${WINDOW_MS:-600000}
  SLIDE_MS=${SLIDE_MS:-100000}
  KEYS_PEERS=${KEYS_PEERS:-numpy bytewax}
  PEERS=$KEYS_PEERS
  for k in $KEYS; do
    [[ "$k" =~ ^[1-9][0-9]*$ ]] || { echo "KEYS: '$k' is not a positive integer" >&2; exit 2; }
  done
  for p in $KEYS_PEERS; do
    case $p in numpy|bytewax) ;; *) echo "KEYS_PEERS: '$p' is not numpy or bytewax" >&2; exit 2 ;; esac
  done
  for v in WINDOW_MS SLIDE_MS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v: '${!v}' is not a positive integer (ms)" >&2; exit 2; }
  done
  [ $((WINDOW_MS % SLIDE_MS)) = 0 ] || { echo "WINDOW_MS ($WINDOW_MS) must be a multiple of SLIDE_MS ($SLIDE_MS)" >&2; exit 2; }
fi
export PYTHONDONTWRITEBYTECODE=1   # never write __pycache__ into the (shared) peers folder

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for f in gen.py reference.py compare.py measure.py numpy_windowed_ols.py bytewax_windowed_ols.py \
         pathway_windowed_ols.py river_windowed_ols.py; do
  [ -f "$PEERS_DIR/$f" ] || die "$PEERS_DIR/$f not found (set PEERS_DIR to the shared/peers folder)"
done
PEERS_DIR=$(cd "$PEERS_DIR" && pwd)
command -v /usr/bin/time >/dev/null || die "/usr/bin/time (GNU time) is needed: apt-get install time"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"

mkdir -p "$WORK" "$OUT/logs" "$OUT/out"
OUT=$(cd "$OUT" && pwd)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "output: $OUT"

# ---------------------------------------------------------------- Tributary binary
if [ -n "${TRIBUTARY_BIN:-}" ]; then
  TRIB=$TRIBUTARY_BIN
else
  log "building Tributary (cargo build --release; set TRIBUTARY_BIN to skip)"
  (cd "$ROOT" && cargo build --release) >&2
  TRIB=$ROOT/target/release/tributary
fi
[ -x "$TRIB" ] || die "Tributary binary $TRIB is not executable"
"$TRIB" --version > "$OUT/tributary_version.txt" 2>&1 || echo "tributary (no --version)" > "$OUT/tributary_version.txt"

# ---------------------------------------------------------------- venv and peers
VENV=$WORK/venv
PY=$VENV/bin/python
INSTALL=$OUT/install.tsv
printf 'package\tstatus\tversion\tseconds\n' > "$INSTALL"
if [ ! -x "$PY" ]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
fi
pip_install() {  # name, pip spec, import name -> a row of install.tsv; never fails the script
  local name=$1 spec=$2 mod=$3 t0 t1 st ver
  t0=$(date +%s.%N)
  if [ "$SKIP_INSTALL" = 1 ]; then st=skipped-install
  elif timeout 900 "$VENV/bin/pip" install -q "$spec" > "$OUT/logs/pip_$name.log" 2>&1; then st=ok
  else st=failed; fi
  t1=$(date +%s.%N)
  if ver=$("$PY" -c "import importlib.metadata as m; print(m.version('$mod'))" 2>/dev/null); then
    [ "$st" = failed ] && st=failed-but-present
  else
    ver=-; st=not-installed
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$st" "$ver" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')" >> "$INSTALL"
  log "install $name: $st $ver"
}
pip_install numpy numpy numpy
pip_install matplotlib matplotlib matplotlib
"$PY" -c "import numpy" 2>/dev/null || die "numpy does not import in $VENV; gen.py and reference.py need it"
for p in $PEERS; do
  case $p in
    numpy) ;;
    bytewax) pip_install bytewax "bytewax==0.21.*" bytewax ;;
    pathway) pip_install pathway pathway pathway ;;
    river) pip_install river river river ;;
    *) die "unknown peer $p (numpy bytewax pathway river)" ;;
  esac
done
peer_ok() {  # can this peer's module be imported?
  case $1 in
    numpy) "$PY" -c "import numpy" 2>/dev/null ;;
    *) "$PY" -c "import $1" >/dev/null 2>&1 ;;
  esac
}

# ---------------------------------------------------------------- data and oracle
label() { case $1 in 1000000) echo 1m ;; 10000000) echo 10m ;; 100000000) echo 100m ;; 200000) echo 200k ;; *) echo "$1" ;; esac; }
data_for() {  # N -> generates (once, cached in $WORK) the CSV and its lstsq reference
  local n=$1 sz d ref
  sz=$(label "$n"); d=$WORK/data_$sz.csv; ref=$WORK/reference_$sz.csv
  if [ ! -f "$d.ok" ]; then
    log "generating $n records -> $d"
    (cd "$PEERS_DIR" && "$PY" gen.py --n "$n" --k 16 --seed 42 --out "$d") >&2
    touch "$d.ok"
  fi
  if [ ! -f "$ref.ok" ]; then
    log "numpy lstsq oracle for $sz -> $ref"
    "$PY" "$PEERS_DIR/measure.py" "$OUT/logs/reference_$sz.log" -- "$PY" "$PEERS_DIR/reference.py" --data "$d" --out "$ref" >&2
    touch "$ref.ok"
  fi
  cp "$ref" "$OUT/out/reference_$sz.csv"
}

# ---------------------------------------------------------------- runs
cpu_busy_s() {  # busy CPU-seconds of the whole machine since boot (user nice system irq softirq steal)
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit}' /proc/stat
}
CONFIGS=$OUT/configs.tsv   # name, engine, workers label, N, rep, log, output csv, status
printf 'name\tengine\tN\trep\tlog\tcsv\tstatus\n' > "$CONFIGS"
run_cfg() {  # name engine n rep outcsv -- cmd...
  local name=$1 engine=$2 n=$3 rep=$4 csv=$5 sz lg rc st; shift 6
  sz=$(label "$n"); lg=$OUT/logs/${name}_${sz}_r$rep.log
  log "run $name N=$n rep=$rep"
  local cpu0 cpu1
  cpu0=$(cpu_busy_s)
  set +e
  (cd "$OUT" && "$PY" "$PEERS_DIR/measure.py" --max-rss-mib "$MAX_RSS_MIB" "$lg" -- \
      timeout -k 10 "$PEER_TIMEOUT" "$@") >&2
  rc=$?
  set -e
  cpu1=$(cpu_busy_s)
  # how busy the whole machine was: CPU-seconds of all processes during the run (the run's
  # own user+sys is in the time -v lines of the same log; report.py subtracts it)
  echo "BUSY machine_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.2f", b - a}')" >> "$lg"
  st=ok
  if [ $rc -ne 0 ]; then st="measure-failed-rc=$rc"; fi
  if grep -q 'killed_rss_guard=1' "$lg" 2>/dev/null; then st=killed-rss-guard
  elif grep -q 'MEASURE .* rc=124 ' "$lg" 2>/dev/null; then st=timeout
  elif ! grep -q 'MEASURE .* rc=0 ' "$lg" 2>/dev/null; then st=failed; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$engine" "$n" "$rep" "$lg" "$csv" "$st" >> "$CONFIGS"
  [ "$st" = ok ] || log "  $name: $st (see $lg)"
}
skip_cfg() {  # name engine n reason
  printf '%s\t%s\t%s\t1\t-\t-\t%s\n' "$1" "$2" "$3" "$4" >> "$CONFIGS"
  log "skip $1: $4"
}
trib_cfg() {  # workers n rep
  local w=$1 n=$2 rep=$3 sz jl csv
  sz=$(label "$n"); jl=$OUT/out/tributary_w${w}_${sz}.jsonl; csv=$OUT/out/tributary_w${w}_${sz}.csv
  rm -f "$jl"
  run_cfg "tributary_w$w" tributary "$n" "$rep" "$csv" -- \
    "$TRIB" run --source "csv:$WORK/data_$sz.csv" --time ts --key key --features x0..x7 --target y \
      --window sliding:60s/10s --lateness 0s --out "$jl" -q -w "$w"
  if [ -f "$jl" ]; then
    "$PY" "$HERE/tributary_to_csv.py" "$jl" "$csv" | tee -a "$OUT/logs/tributary_w${w}_${sz}_r$rep.log" >&2 || true
    rm -f "$jl"   # 10M-record outputs are small, but do not keep them around
  fi
}

write_machine() {  # the run's context, for the reports
  {
    echo "date_utc=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "mem_total_gib=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "loadavg_start=$LOAD_START"
    echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "kernel=$(uname -r)"
    echo "python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
    echo "tributary=$(head -1 "$OUT/tributary_version.txt")"
    echo "tributary_commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo -)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes in src/Cargo')"
    echo "tributary_bin=$TRIB"
    echo "tributary_bin_mtime=$(date -u -r "$TRIB" '+%Y-%m-%d %H:%M UTC')"
    echo "tributary_built_by_script=$([ -n "${TRIBUTARY_BIN:-}" ] && echo no || echo yes)"
    echo "n=$N"
    echo "n_big=$N_BIG"
    echo "repeats=$REPEATS"
    echo "command=$DOC_CMD"
    echo "keys=$KEYS"
    echo "window_ms=${WINDOW_MS:-60000}"
    echo "slide_ms=${SLIDE_MS:-10000}"
    echo "work=$WORK"
    echo "peers_dir=$PEERS_DIR"
  } > "$OUT/machine.txt"
}

# ---------------------------------------------------------------- many-keys mode (KEYS set)
if [ -n "$KEYS" ]; then
  SZ=$(label "$N")
  O=$OUT/out
  WS="w${WINDOW_MS}_s${SLIDE_MS}"
  keys_data() {  # K -> generates (once, cached in $WORK) the K-key CSV and its lstsq oracle for these windows
    local k=$1 d ref
    d=$WORK/data_${SZ}_k$k.csv; ref=$WORK/reference_${SZ}_k${k}_$WS.csv
    if [ ! -f "$d.ok" ]; then
      log "generating $N records, $k keys -> $d"
      (cd "$PEERS_DIR" && "$PY" gen.py --n "$N" --k "$k" --seed 42 --out "$d") >&2
      touch "$d.ok"
    fi
    if [ ! -f "$ref.ok" ]; then
      log "numpy lstsq oracle, $k keys, window ${WINDOW_MS}/${SLIDE_MS} ms -> $ref"
      "$PY" "$PEERS_DIR/measure.py" "$OUT/logs/reference_${SZ}_k$k.log" -- \
        "$PY" "$PEERS_DIR/reference.py" --data "$d" --out "$ref" --w "$WINDOW_MS" --s "$SLIDE_MS" >&2
      touch "$ref.ok"
    fi
    cp "$ref" "$O/reference_${SZ}_k$k.csv"
  }
  for k in $KEYS; do
    keys_data "$k"
    D=$WORK/data_${SZ}_k$k.csv
    for rep in $(seq 1 "$REPEATS"); do
      for w in 1 2; do
        name=tributary_w${w}__k$k
        jl=$O/$name.jsonl; csv=$O/${name}_$SZ.csv
        rm -f "$jl"
        run_cfg "$name" tributary "$N" "$rep" "$csv" -- \
          "$TRIB" run --source "csv:$D" --time ts --key key --features x0..x7 --target y \
            --window "sliding:${WINDOW_MS}ms/${SLIDE_MS}ms" --lateness 0s --out "$jl" -q -w "$w"
        if [ -f "$jl" ]; then
          "$PY" "$HERE/tributary_to_csv.py" "$jl" "$csv" | tee -a "$OUT/logs/${name}_${SZ}_r$rep.log" >&2 || true
          rm -f "$jl"
        fi
      done
      for p in $KEYS_PEERS; do
        if ! peer_ok "$p"; then
          [ "$rep" = 1 ] && skip_cfg "${p}__k$k" "$p" "$N" "not-installed"
          continue
        fi
        case $p in
          numpy)
            run_cfg "numpy__k$k" numpy "$N" "$rep" "$O/numpy__k${k}_$SZ.csv" -- "$PY" "$PEERS_DIR/numpy_windowed_ols.py" \
              --data "$D" --out "$O/numpy__k${k}_$SZ.csv" --w "$WINDOW_MS" --s "$SLIDE_MS" ;;
          bytewax)
            run_cfg "bytewax_w1__k$k" bytewax "$N" "$rep" "$O/bytewax_w1__k${k}_$SZ.csv" -- "$PY" "$PEERS_DIR/bytewax_windowed_ols.py" \
              --data "$D" --out "$O/bytewax_w1__k${k}_$SZ.csv" --w "$WINDOW_MS" --s "$SLIDE_MS" ;;
        esac
      done
    done
    log "checking the $k-key outputs against the oracle (compare.py)"
    ls "$O"/*__k"${k}_$SZ".csv > "$OUT/files_${SZ}_k$k.txt" 2>/dev/null || true
    if [ -s "$OUT/files_${SZ}_k$k.txt" ]; then
      "$PY" "$PEERS_DIR/compare.py" --ref "$O/reference_${SZ}_k$k.csv" $(cat "$OUT/files_${SZ}_k$k.txt") \
        > "$OUT/compare_${SZ}_k$k.txt" || log "compare.py failed for $k keys"
      cat "$OUT/compare_${SZ}_k$k.txt" >&2
    fi
  done
  write_machine
  "$PY" "$HERE/keys_report.py" "$OUT" || die "keys_report.py failed"
  log "done: $OUT/results_keys.md, $OUT/keys.svg"
  exit 0
fi

SZ=$(label "$N")
data_for "$N"
D=$WORK/data_$SZ.csv
O=$OUT/out
for rep in $(seq 1 "$REPEATS"); do
  trib_cfg 1 "$N" "$rep"
  trib_cfg 2 "$N" "$rep"
  for p in $PEERS; do
    if ! peer_ok "$p"; then
      [ "$rep" = 1 ] && skip_cfg "$p" "$p" "$N" "not-installed"
      continue
    fi
    case $p in
      numpy)
        run_cfg numpy numpy "$N" "$rep" "$O/numpy_$SZ.csv" -- "$PY" "$PEERS_DIR/numpy_windowed_ols.py" --data "$D" --out "$O/numpy_$SZ.csv" ;;
      bytewax)
        run_cfg bytewax_w1 bytewax "$N" "$rep" "$O/bytewax_w1_$SZ.csv" -- "$PY" "$PEERS_DIR/bytewax_windowed_ols.py" --data "$D" --out "$O/bytewax_w1_$SZ.csv"
        run_cfg bytewax_t2 bytewax "$N" "$rep" "$O/bytewax_t2_$SZ.csv" -- "$PY" "$PEERS_DIR/bytewax_windowed_ols.py" --data "$D" --out "$O/bytewax_t2_$SZ.csv" --threads 2
        run_cfg bytewax_p2 bytewax "$N" "$rep" "$O/bytewax_p2_$SZ.csv" -- "$PY" "$PEERS_DIR/bytewax_windowed_ols.py" --data "$D" --out "$O/bytewax_p2_$SZ.csv" --procs 2 ;;
      pathway)
        run_cfg pathway_nd_t1 pathway "$N" "$rep" "$O/pathway_nd_t1_$SZ.csv" -- env PATHWAY_THREADS=1 "$PY" "$PEERS_DIR/pathway_windowed_ols.py" --data "$D" --out "$O/pathway_nd_t1_$SZ.csv"
        run_cfg pathway_nd_t2 pathway "$N" "$rep" "$O/pathway_nd_t2_$SZ.csv" -- env PATHWAY_THREADS=2 "$PY" "$PEERS_DIR/pathway_windowed_ols.py" --data "$D" --out "$O/pathway_nd_t2_$SZ.csv"
        if [ "$PW_COLS" = 1 ]; then
          run_cfg pathway_cols_t2 pathway "$N" "$rep" "$O/pathway_cols_t2_$SZ.csv" -- env PATHWAY_THREADS=2 "$PY" "$PEERS_DIR/pathway_windowed_ols.py" --variant cols --data "$D" --out "$O/pathway_cols_t2_$SZ.csv"
        elif [ "$rep" = 1 ]; then
          skip_cfg pathway_cols_t2 pathway "$N" "skipped (55 scalar sums: >19 GiB at 1M per the peers README; PW_COLS=1 forces it)"
        fi ;;
      river)
        run_cfg river_running river "$N" "$rep" "$O/river_running_$SZ.csv" -- "$PY" "$PEERS_DIR/river_windowed_ols.py" --data "$D" --out "$O/river_running_$SZ.csv"
        run_cfg river_perwindow river "$N" "$rep" "$O/river_perwindow_$SZ.csv" -- "$PY" "$PEERS_DIR/river_windowed_ols.py" --mode perwindow --data "$D" --out "$O/river_perwindow_$SZ.csv" ;;
    esac
  done
done
log "checking outputs against the oracle (compare.py)"
ls "$O"/*_"$SZ".csv | grep -v "/reference_" > "$OUT/files_$SZ.txt" || true
if [ -s "$OUT/files_$SZ.txt" ]; then
  "$PY" "$PEERS_DIR/compare.py" --ref "$O/reference_$SZ.csv" $(cat "$OUT/files_$SZ.txt") > "$OUT/compare_$SZ.txt" || log "compare.py failed for $SZ"
  cat "$OUT/compare_$SZ.txt" >&2
fi

if [ "$N_BIG" != 0 ] && [ "$N_BIG" != "$N" ]; then
  BSZ=$(label "$N_BIG")
  data_for "$N_BIG"
  for rep in $(seq 1 "$REPEATS"); do
    trib_cfg 1 "$N_BIG" "$rep"
    trib_cfg 2 "$N_BIG" "$rep"
  done
  "$PY" "$PEERS_DIR/compare.py" --ref "$O/reference_$BSZ.csv" "$O"/tributary_w*_"$BSZ".csv > "$OUT/compare_$BSZ.txt" || log "compare.py failed for $BSZ"
  cat "$OUT/compare_$BSZ.txt" >&2
fi

# ---------------------------------------------------------------- machine, table, plot
write_machine
"$PY" "$HERE/report.py" "$OUT" || die "report.py failed"
log "done: $OUT/results.md, $OUT/peers.svg"
