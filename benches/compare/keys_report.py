#!/usr/bin/env python3
"""Build results_keys.md, results_keys.json and keys.svg from one many-keys run of
benches/compare/run.sh (KEYS="16 1000 10000" ...): per key count and engine, records/s,
final windows/s, peak RSS and the coefficient error against that key count's lstsq oracle;
the plot has records/s and peak RSS against keys, log scales.

Usage: python keys_report.py OUT_DIR
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import fnum, label, parse_compare, parse_log  # noqa: E402

D = 8  # features; a (key, window) needs n >= D + 1 records for a unique OLS answer


def window_counts(data, w_ms, s_ms):
    """(window_start, key) -> records, from the CSV's ts and key columns (ts sorted)."""
    import numpy as np
    a = np.loadtxt(data, delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.int64)
    ts, key = a[:, 0], a[:, 1]
    out = {}
    st = (int(ts[0]) // s_ms) * s_ms - ((w_ms - 1) // s_ms) * s_ms
    while st <= int(ts[-1]):
        i0, i1 = np.searchsorted(ts, st), np.searchsorted(ts, st + w_ms)
        if i1 > i0:
            bc = np.bincount(key[i0:i1])
            for k in np.nonzero(bc)[0]:
                out[(st, int(k))] = int(bc[k])
        st += s_ms
    return out


def error_bands(ref_csv, got_csv, counts):
    """compare.py's per-row error, split by the rows' record counts: the max over rows with
    n = D + 1 (exactly determined: zero residual degrees of freedom) and over n > D + 1, and
    how many reference rows have n <= D (underdetermined: lstsq's min-norm answer)."""
    import numpy as np
    from common import read_coefs
    ref, got = read_coefs(ref_csv), read_coefs(got_csv)
    exact, over, under_present, n_exact, n_over = 0.0, 0.0, 0, 0, 0
    for k, b in got.items():
        if k not in ref:
            continue
        r = ref[k]
        e = float(np.max(np.abs(b - r)) / np.max(np.abs(r)))
        n = counts.get(k, 0)
        if n <= D:
            under_present += 1
        elif n == D + 1:
            exact, n_exact = max(exact, e), n_exact + 1
        else:
            over, n_over = max(over, e), n_over + 1
    under_ref = sum(1 for k in ref if counts.get(k, 0) <= D)
    return dict(err_exact=exact if n_exact else None, err_over=over if n_over else None, rows_exact=n_exact,
                rows_over=n_over, under_ref=under_ref, under_present=under_present)

LABELS = {
    "tributary_w1": ("Tributary", "-w 1"),
    "tributary_w2": ("Tributary", "-w 2"),
    "numpy": ("numpy batch recompute", "1 thread"),
    "bytewax_w1": ("bytewax", "1 worker (run_main)"),
}
ORDER = list(LABELS)
STYLE = {  # colour, marker, line style
    "tributary_w1": ("#c0392b", "o", "-"),
    "tributary_w2": ("#c0392b", "s", "--"),
    "numpy": ("#7f8c8d", "^", "-"),
    "bytewax_w1": ("#2980b9", "D", "-"),
}


def main():
    out = sys.argv[1]
    machine = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(out, "machine.txt")) if "=" in l)
    install = {}
    for l in list(open(os.path.join(out, "install.tsv")))[1:]:
        c = l.rstrip("\n").split("\t")
        install[c[0]] = dict(status=c[1], version=c[2], seconds=c[3])
    n = int(machine["n"])
    w_ms, s_ms = int(machine["window_ms"]), int(machine["slide_ms"])

    groups = {}
    for l in list(open(os.path.join(out, "configs.tsv")))[1:]:
        name, engine, _n, rep, lg, csv, st = l.rstrip("\n").split("\t")
        if "__k" not in name:
            continue
        cfg, k = name.split("__k")
        g = groups.setdefault((cfg, int(k)), dict(cfg=cfg, engine=engine, keys=int(k), csv=csv, runs=[]))
        d = parse_log(lg)
        d["status"] = st
        g["runs"].append(d)

    sys.path.insert(0, machine.get("peers_dir", ""))
    counts = {}
    results = []
    for (cfg, k), g in sorted(groups.items(), key=lambda t: (t[0][1], ORDER.index(t[0][0]) if t[0][0] in ORDER else 99)):
        peer, workers = LABELS.get(cfg, (cfg, ""))
        ok = [r for r in g["runs"] if r["status"] == "ok" and r.get("proc")]
        statuses = sorted(set(r["status"] for r in g["runs"]))
        res = dict(cfg=cfg, engine=g["engine"], peer=peer, workers=workers, keys=k, n=n,
                   runs=len(g["runs"]), ok_runs=len(ok), status=",".join(statuses))
        if g["engine"] == "tributary":
            res["version"] = machine.get("tributary", "")
        else:
            res["version"] = install.get(g["engine"], {}).get("version", "-")
        cmp_ = parse_compare(os.path.join(out, f"compare_{label(n)}_k{k}.txt"))
        base = os.path.basename(g["csv"]) if g["csv"] not in ("", "-") else None
        if base and base in cmp_:
            res.update(cmp_[base])
            res["windows"] = cmp_[base]["matched"] + cmp_[base]["extra"]  # rows with coefficients
        res["ref_rows"] = cmp_.get("__ref_rows__")
        if base and "matched" in res:
            if k not in counts:
                counts[k] = window_counts(os.path.join(machine["work"], f"data_{label(n)}_k{k}.csv"), w_ms, s_ms)
            res.update(error_bands(os.path.join(out, "out", f"reference_{label(n)}_k{k}.csv"), g["csv"], counts[k]))
        if ok:
            res["proc_s"] = statistics.median(r["proc"] for r in ok)
            res["rps"] = n / res["proc_s"]
            if res.get("windows"):
                res["wps"] = res["windows"] / res["proc_s"]
            res["wall_s"] = statistics.median(r["wall"] for r in ok if r.get("wall"))
            res["rss_mib"] = max(r["time_rss"] for r in ok if r.get("time_rss") is not None)
            oc = [r["other_cores"] for r in ok if "other_cores" in r]
            if oc:
                res["other_cores"] = statistics.median(oc)
        for r in g["runs"]:
            if r.get("done_line"):
                res["done_line"] = r["done_line"]
                res["records_seen"] = r.get("records")
                # Tributary's final windows include the underdetermined ones (coef null)
                res["windows"] = int(r["done"].get("windows_final", res.get("windows") or 0))
            if r.get("convert"):
                res["convert"] = r["convert"]
            if r.get("errors") and r["status"] != "ok":
                res["errors"] = r["errors"]
        results.append(res)

    # Tributary -w 1 against every other config at the same key count
    t1 = {r["keys"]: r for r in results if r["cfg"] == "tributary_w1" and r.get("rps")}
    for r in results:
        if r["cfg"] != "tributary_w1" and r.get("rps") and r["keys"] in t1:
            r["t1_ratio"] = t1[r["keys"]]["rps"] / r["rps"]

    md = []
    md.append(f"Date: {machine.get('date_utc')}. Machine: {machine.get('nproc')} cores ({machine.get('cpu')}), "
              f"{machine.get('mem_total_gib')} GiB RAM, Python {machine.get('python')}. Load average at start / end: "
              f"{machine.get('loadavg_start')} / {machine.get('loadavg_end')}. Tributary: {machine.get('tributary')}, "
              f"binary `{machine.get('tributary_bin')}` (file time {machine.get('tributary_bin_mtime')}; "
              f"{'built by this script' if machine.get('tributary_built_by_script') == 'yes' else 'given as TRIBUTARY_BIN'}).")
    md.append("")
    md.append(f"Command: `{machine.get('command')}`")
    md.append("")
    md.append(f"N = {n:,} records (`gen.py --n {n} --k K --seed 42`, one record per ms), sliding "
              f"{w_ms / 1000:g} s / {s_ms / 1000:g} s, so a (key, window) holds about {w_ms:,} / K records; "
              f"every engine reads the same file for a given K.")
    md.append("")
    md.append("| keys | engine | config | records/s | final windows | final windows/s | processing s | wall s | "
              "peak RSS MiB | max rel. err, all rows | n = 9 rows | n ≥ 10 rows | rows matched / missing / extra | "
              "Tributary -w 1 ÷ this | other load, cores |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if not r.get("rps"):
            md.append(f"| {r['keys']:,} | {r['peer']} | {r['workers']} | {r['status']} | - | - | - | - | - | - | - | - | - | - | - |")
            continue
        rows = f"{r['matched']:,} / {r['missing']} / {r['extra']}" if "matched" in r else "-"
        mr = f"{r['max_rel']:.2e}" if "max_rel" in r else "-"
        ex = f"{r['err_exact']:.2e} ({r['rows_exact']:,})" if r.get("err_exact") is not None else "-"
        ov = f"{r['err_over']:.2e}" if r.get("err_over") is not None else "-"
        oc = f"{r['other_cores']:.2f}" if "other_cores" in r else "-"
        ratio = f"{r['t1_ratio']:.2f}×" if "t1_ratio" in r else "-"
        st = "" if r["status"] == "ok" else f" [{r['status']}]"
        md.append(f"| {r['keys']:,} | {r['peer']}{st} | {r['workers']} | {fnum(r['rps'], 0)} | "
                  f"{fnum(r.get('windows'), 0)} | {fnum(r.get('wps'), 0)} | {fnum(r.get('proc_s'))} | "
                  f"{fnum(r.get('wall_s'))} | {fnum(r.get('rss_mib'), 0)} | {mr} | {ex} | {ov} | {rows} | {ratio} | {oc} |")
    md.append("")
    md.append("*records/s* and *final windows/s*: N and the final (window, key) results the engine wrote, over its own "
              "processing time (Tributary's `elapsed`, the peers' `processing_wall_s`; CSV parsing included, "
              "start-up excluded). *peak RSS*: GNU time. *max rel. err*: compare.py's per-row "
              "`max_i |b_i − ref_i| / max_i |ref_i|` against `lstsq` on the raw rows, over every row both have, "
              "then split by the row's record count n: n = 9 = d + 1 (exactly determined, no residual degree of "
              "freedom; how many such rows in parentheses) and n ≥ 10. *other load*: CPU time of every other "
              "process during the run over its wall time (2 = both cores taken by other work). Rows with n ≤ 8 are underdetermined: `lstsq` returns its minimum-norm answer, "
              "the peers solve singular normal equations (the large errors of the all-rows column), Tributary writes "
              "`\"coef\":null, \"status\":\"underdetermined\"` (its missing rows).")
    md.append("")
    notes = []
    trib = [r for r in results if r["engine"] == "tributary" and "max_rel" in r]
    if trib:
        worst = max(r["max_rel"] for r in trib)
        worst10 = max(r.get("err_over") or 0.0 for r in trib)
        notes.append(f"* Tributary's max relative coefficient error over all its runs: {worst:.3e} over every row, "
                     f"{worst10:.3e} over the rows with n ≥ 10 (≤ 1e-9: {'met' if worst <= 1e-9 else 'not met'} "
                     f"/ {'met' if worst10 <= 1e-9 else 'not met'}).")
    for r in results:
        if r.get("done_line"):
            notes.append(f"* `{r['cfg']}` K={r['keys']:,}: `{r['done_line']}`")
        if r["engine"] == "tributary" and r.get("records_seen") not in (None, n):
            notes.append(f"* **`{r['cfg']}` K={r['keys']:,} read {r['records_seen']:,} records, not {n:,}.**")
        if r.get("errors"):
            notes.append(f"* `{r['cfg']}` K={r['keys']:,} {r['status']}: " + " / ".join(f"`{e.strip()[:200]}`" for e in r["errors"]))
    for r in results:
        if "under_ref" in r and r["engine"] == "tributary":
            notes.append(f"* `{r['cfg']}` K={r['keys']:,}: {r['under_ref']:,} oracle rows have n ≤ 8; "
                         f"{r['missing']:,} rows missing, {r['under_present']:,} underdetermined rows present"
                         + (f"; `{r['convert']}`" if r.get("convert") else ""))
    md += notes
    md.append("")
    with open(os.path.join(out, "results_keys.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out, "results_keys.json"), "w") as f:
        json.dump(dict(machine=machine, install=install, results=results), f, indent=1, default=str)

    try:
        import matplotlib
        matplotlib.use("Agg")
        matplotlib.rcParams["svg.fonttype"] = "none"
        matplotlib.rcParams["svg.hashsalt"] = "tributary"
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        print("\n".join(md))
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for cfg in ORDER:
        pts = sorted((r["keys"], r["rps"], r["rss_mib"]) for r in results if r["cfg"] == cfg and r.get("rps"))
        if not pts:
            continue
        c, m, ls = STYLE[cfg]
        lab = " ".join(LABELS[cfg])
        ks = [p[0] for p in pts]
        a1.plot(ks, [p[1] for p in pts], color=c, marker=m, linestyle=ls, label=lab)
        a2.plot(ks, [p[2] for p in pts], color=c, marker=m, linestyle=ls, label=lab)
        # -w 2 runs close to -w 1: its labels go left of the points, the others' right
        off, ha = ((-6, 5), "right") if cfg == "tributary_w2" else ((4, 4), "left")
        for k, rps, rss in pts:
            a1.annotate(f"{rps / 1e3:,.0f} k", (k, rps), textcoords="offset points", xytext=off, ha=ha, fontsize=7, color=c)
            a2.annotate(f"{rss:,.0f}", (k, rss), textcoords="offset points", xytext=off, ha=ha, fontsize=7, color=c)
    from matplotlib.ticker import FuncFormatter, NullFormatter
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}")
    for ax, yl in ((a1, "records/s (N / processing s), log"), (a2, "peak RSS MiB (time -v), log")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.set_xlabel("keys, log")
        ax.set_ylabel(yl)
        ax.grid(which="both", alpha=0.3)
    a1.yaxis.set_minor_formatter(NullFormatter())
    a2.yaxis.set_minor_formatter(plain)  # RSS spans about one decade: label the minor ticks too
    a1.legend(fontsize=8)
    fig.suptitle(f"Windowed OLS per key, d=8, sliding {w_ms / 1000:g} s/{s_ms / 1000:g} s, N={n:,}, same CSV per key count; "
                 f"{machine.get('date_utc')}, {machine.get('nproc')} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "keys.svg"))
    fig.savefig(os.path.join(out, "keys.png"), dpi=100)
    print("\n".join(md))


if __name__ == "__main__":
    main()
