#!/usr/bin/env python3
"""Build results.md, results.json and peers.svg from one benches/compare/run.sh output folder.

Usage: python report.py OUT_DIR
"""
import json
import os
import re
import statistics
import sys

LABELS = {
    "tributary_w1": ("Tributary", "1 worker (-w 1)", "Rust"),
    "tributary_w2": ("Tributary", "2 workers (-w 2)", "Rust"),
    "numpy": ("numpy batch recompute", "1 thread", "Python"),
    "bytewax_w1": ("bytewax", "1 worker (run_main)", "Python"),
    "bytewax_t2": ("bytewax", "2 threads, 1 proc", "Python"),
    "bytewax_p2": ("bytewax", "2 procs x 1 worker", "Python"),
    "pathway_nd_t1": ("pathway (ndarray sum)", "1 thread", "Python"),
    "pathway_nd_t2": ("pathway (ndarray sum)", "2 threads", "Python"),
    "pathway_cols_t2": ("pathway (55 scalar sums)", "2 threads", "Python"),
    "river_running": ("river LinearRegression, 1 model/key (SGD, approximate)", "1", "Python"),
    "river_perwindow": ("river LinearRegression, 1 model/(key,window) (SGD, approximate)", "1", "Python"),
}
VERSION_OF = {"numpy": "numpy", "bytewax": "bytewax", "pathway": "pathway", "river": "river"}
# Engines whose output is exact OLS (river is SGD: a throughput reference only).
EXACT = {"tributary", "numpy", "bytewax", "pathway"}
STREAMING = {"bytewax", "pathway", "river"}


def label(n):
    return {1_000_000: "1m", 10_000_000: "10m", 100_000_000: "100m", 200_000: "200k"}.get(n, str(n))


def fnum(x, nd=2):
    return "-" if x is None else f"{x:,.{nd}f}"


def parse_log(path):
    d = {}
    if not path or path == "-" or not os.path.exists(path):
        return d
    txt = open(path, errors="replace").read()
    m = re.search(r"MEASURE wall_s=([\d.]+) tree_peak_rss_mib=([\d.]+) time_max_rss_mib=([\d.]+|nan) rc=(-?\d+) killed_rss_guard=(\d)", txt)
    if m:
        d["wall"] = float(m.group(1))
        d["tree_rss"] = float(m.group(2))
        d["time_rss"] = float(m.group(3))
        d["rc"] = int(m.group(4))
        d["killed"] = m.group(5) == "1"
    m = re.search(r"processing_wall_s=([\d.]+)", txt)
    if m:
        d["proc"] = float(m.group(1))
    m = re.search(r"^done: (.*)$", txt, re.M)
    if m:
        d["done_line"] = m.group(0)
        kv = dict(re.findall(r"(\w+)=([^\s]+)", m.group(1)))
        d["done"] = kv
        d["proc"] = float(kv["elapsed"].rstrip("s"))
        d["records"] = int(kv["records"])
    m = re.search(r"^tributary_to_csv: .*$", txt, re.M)
    if m:
        d["convert"] = m.group(0)
    u = re.search(r"User time \(seconds\): ([\d.]+)", txt)
    s = re.search(r"System time \(seconds\): ([\d.]+)", txt)
    b = re.search(r"BUSY machine_cpu_s=([\d.]+)", txt)
    if u and s:
        d["own_cpu"] = float(u.group(1)) + float(s.group(1))
    if b and "own_cpu" in d and d.get("wall"):
        d["other_cores"] = max(0.0, (float(b.group(1)) - d["own_cpu"]) / d["wall"])
    # the command's own last lines (before GNU time's report), to say why a run failed
    body = txt.split("\tCommand being timed:")[0].splitlines()
    body = [l for l in body[1:] if l.strip() and not l.startswith(("MEASURE", "BUSY", "Command exited", "Command terminated"))]
    if body:
        d["errors"] = body[-3:]
    return d


def parse_compare(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        c = line.split()
        if len(c) == 7 and c[0].endswith(".csv"):
            out[c[0]] = dict(matched=int(c[1]), missing=int(c[2]), extra=int(c[3]),
                             max_rel=float(c[4]), med_rel=float(c[5]), max_abs=float(c[6]))
        elif len(c) >= 1 and c[0].startswith("reference"):
            m = re.search(r": (\d+) rows", line)
            if m:
                out["__ref_rows__"] = int(m.group(1))
    return out


def main():
    out = sys.argv[1]
    machine = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(out, "machine.txt")) if "=" in l)
    install = {}
    for l in list(open(os.path.join(out, "install.tsv")))[1:]:
        c = l.rstrip("\n").split("\t")
        install[c[0]] = dict(status=c[1], version=c[2], seconds=c[3])
    cfg_rows = [l.rstrip("\n").split("\t") for l in list(open(os.path.join(out, "configs.tsv")))[1:]]
    compares = {}
    for f in os.listdir(out):
        m = re.match(r"compare_(\w+)\.txt$", f)
        if m:
            compares[m.group(1)] = parse_compare(os.path.join(out, f))

    # group the repeats of one (config, N)
    groups = {}
    order = []
    for name, engine, n, rep, lg, csv, st in cfg_rows:
        k = (name, int(n))
        if k not in groups:
            groups[k] = dict(name=name, engine=engine, n=int(n), runs=[], csv=csv, statuses=[])
            order.append(k)
        g = groups[k]
        g["statuses"].append(st)
        d = parse_log(lg)
        d["status"] = st
        d["log"] = lg
        g["runs"].append(d)

    results = []
    for k in order:
        g = groups[k]
        name, n = g["name"], g["n"]
        peer, workers, lang = LABELS.get(name, (name, "", ""))
        ok = [r for r in g["runs"] if r["status"] == "ok" and r.get("proc")]
        okw = [r for r in g["runs"] if r["status"] == "ok" and r.get("wall")]
        res = dict(name=name, engine=g["engine"], peer=peer, workers=workers, lang=lang, n=n,
                   runs=len(g["runs"]), ok_runs=len(ok), status=",".join(sorted(set(g["statuses"]))))
        if g["engine"] == "tributary":
            res["version"] = machine.get("tributary", "")
        else:
            iv = install.get(VERSION_OF.get(g["engine"], ""), {})
            res["version"] = iv.get("version", "-")
        if ok:
            procs = [r["proc"] for r in ok]
            res["proc_s"] = statistics.median(procs)
            res["proc_min"], res["proc_max"] = min(procs), max(procs)
            res["rps_proc"] = n / res["proc_s"]
        if okw:
            walls = [r["wall"] for r in okw]
            res["wall_s"] = statistics.median(walls)
            res["rps_wall"] = n / res["wall_s"]
            rss_key = "tree_rss" if name.endswith("_p2") else "time_rss"
            res["rss_mib"] = max(r[rss_key] for r in okw)
            res["rss_kind"] = "sum of processes" if name.endswith("_p2") else "time -v"
            oc = [r["other_cores"] for r in okw if "other_cores" in r]
            if oc:
                res["other_cores"] = statistics.median(oc)
        for r in g["runs"]:
            if r.get("done_line"):
                res["done_line"] = r["done_line"]
                res["records_seen"] = r.get("records")
            if r.get("convert"):
                res["convert"] = r["convert"]
            if r.get("errors") and r["status"] != "ok":
                res["errors"] = r["errors"]
        cmp_ = compares.get(label(n), {})
        base = os.path.basename(g["csv"]) if g["csv"] not in ("", "-") else None
        if base and base in cmp_:
            res.update(cmp_[base])
        res["ref_rows"] = cmp_.get("__ref_rows__")
        results.append(res)

    # ratios: the best Tributary config at the same N against each peer
    best_t = {}
    for r in results:
        if r["engine"] == "tributary" and r.get("rps_proc"):
            b = best_t.get(r["n"])
            if b is None or r["rps_proc"] > b["rps_proc"]:
                best_t[r["n"]] = r
    best_tw = {}
    for r in results:
        if r["engine"] == "tributary" and r.get("rps_wall"):
            b = best_tw.get(r["n"])
            if b is None or r["rps_wall"] > b["rps_wall"]:
                best_tw[r["n"]] = r
    for r in results:
        if r["engine"] != "tributary":
            if r.get("rps_proc") and r["n"] in best_t:
                r["ratio_proc"] = best_t[r["n"]]["rps_proc"] / r["rps_proc"]
            if r.get("rps_wall") and r["n"] in best_tw:
                r["ratio_wall"] = best_tw[r["n"]]["rps_wall"] / r["rps_wall"]

    n0 = int(machine["n"])
    peers0 = [r for r in results if r["n"] == n0 and r["engine"] != "tributary" and r.get("rps_proc")]
    headline = []

    def head(title, pool):
        if n0 not in best_t:
            headline.append(f"* {title}: Tributary had no successful run at N={n0:,}")
            return None
        if not pool:
            headline.append(f"* {title}: no successful peer run")
            return None
        p = max(pool, key=lambda r: r["rps_proc"])
        t = best_t[n0]
        tw = best_tw[n0]
        line = (f"* **{title}: {p['peer']} ({p['workers']}), {p['rps_proc']:,.0f} records/s** (processing) — "
                f"Tributary {t['workers']} {t['rps_proc']:,.0f} records/s = **{t['rps_proc'] / p['rps_proc']:.1f}×**; "
                f"wall-clock basis: {tw['rps_wall']:,.0f} vs {p['rps_wall']:,.0f} records/s = "
                f"{tw['rps_wall'] / p['rps_wall']:.1f}×")
        headline.append(line)
        return dict(peer=p["name"], ratio_proc=t["rps_proc"] / p["rps_proc"], ratio_wall=tw["rps_wall"] / p["rps_wall"])

    h_all = head("Fastest Python-hosted peer", peers0)
    h_stream = head("Fastest Python streaming engine", [r for r in peers0 if r["engine"] in STREAMING])
    h_exact = head("Fastest exact Python streaming engine",
                   [r for r in peers0 if r["engine"] in STREAMING and r["engine"] in EXACT])
    # coefficient accuracy
    trib = [r for r in results if r["engine"] == "tributary" and "max_rel" in r]
    if trib:
        worst = max(r["max_rel"] for r in trib)
        rows_ok = all(r.get("missing") == 0 and r.get("extra") == 0 for r in trib)
        headline.append(f"* Tributary coefficients vs the numpy lstsq oracle: max relative error "
                        f"{worst:.3e} over all its runs (target ≤ 1e-9: {'met' if worst <= 1e-9 else 'NOT met'}); "
                        f"rows missing/extra: {'none' if rows_ok else 'SEE TABLE'}")

    # ---------------------------------------------------------------- markdown
    md = []
    md.append(f"Date: {machine.get('date_utc')}. Machine: {machine.get('nproc')} cores ({machine.get('cpu')}), "
              f"{machine.get('mem_total_gib')} GiB RAM, Linux {machine.get('kernel')}, Python {machine.get('python')}. "
              f"Load average at start / end: {machine.get('loadavg_start')} / {machine.get('loadavg_end')}. "
              f"Tributary: {machine.get('tributary')}, binary `{machine.get('tributary_bin', '?')}` "
              f"(file time {machine.get('tributary_bin_mtime', '?')}; "
              f"{'built by this script' if machine.get('tributary_built_by_script') == 'yes' else 'given as TRIBUTARY_BIN, not built by this script'}); "
              f"project at run time: {machine.get('tributary_commit')}.")
    md.append("")
    md.append(f"Command: `{machine.get('command')}`")
    md.append("")
    md.append("Headline (N = {:,}, same CSV file for every engine):".format(n0))
    md.append("")
    md += headline
    md.append("")
    md.append("| engine | config | N | processing s | records/s (processing) | wall s | records/s (wall) | "
              "peak RSS MiB | max rel. err | median rel. err | rows matched / missing / extra | "
              "Tributary best ÷ this (processing) | (wall) | other load, cores |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        n_txt = f"{r['n']:,}"
        if r["engine"] == "tributary" and r["n"] != n0:
            n_txt += " (Tributary only: start-up amortised)"
        if r["status"] != "ok" and not r.get("rps_proc"):
            md.append(f"| {r['peer']} | {r['workers']} | {n_txt} | {r['status']} | - | - | - | - | - | - | - | - | - | - |")
            continue
        rng = ""
        if r["ok_runs"] > 1:
            rng = f" ({r['proc_min']:.2f}–{r['proc_max']:.2f}, {r['ok_runs']} runs)"
        rss = fnum(r.get("rss_mib"), 0) + (" (sum of procs)" if r.get("rss_kind") == "sum of processes" else "")
        rows = "-"
        if "matched" in r:
            rows = f"{r['matched']:,} / {r['missing']} / {r['extra']}"
        mr = f"{r['max_rel']:.2e}" if "max_rel" in r else "-"
        me = f"{r['med_rel']:.2e}" if "med_rel" in r else "-"
        rp = f"{r['ratio_proc']:.1f}×" if "ratio_proc" in r else ("(best)" if best_t.get(r["n"]) is r else "-")
        rw = f"{r['ratio_wall']:.1f}×" if "ratio_wall" in r else ("(best)" if best_tw.get(r["n"]) is r else "-")
        oc = f"{r['other_cores']:.2f}" if "other_cores" in r else "-"
        st = "" if r["status"] == "ok" else f" [{r['status']}]"
        md.append(f"| {r['peer']}{st} | {r['workers']} | {n_txt} | {fnum(r.get('proc_s'))}{rng} | "
                  f"{fnum(r.get('rps_proc'), 0)} | {fnum(r.get('wall_s'))} | {fnum(r.get('rps_wall'), 0)} | {rss} | "
                  f"{mr} | {me} | {rows} | {rp} | {rw} | {oc} |")
    md.append("")
    md.append("Columns: *processing s* is the time the engine reports for itself — the peers' "
              "`processing_wall_s` (excludes Python and library start-up; includes CSV parsing) and "
              "Tributary's `elapsed` from its `done:` line (dataflow start to the last output, CSV "
              "parsing included; excludes process start-up). *wall s* is the whole command under "
              "`/usr/bin/time -v` (measure.py). *peak RSS* is GNU time's maximum resident set size "
              "(for the 2-process bytewax run: the sampled sum over its processes). *max / median rel. "
              "err* is compare.py's per-row `max_i |b_i − ref_i| / max_i |ref_i|` against numpy "
              "`lstsq`. *Tributary best ÷ this* divides the records/s of the fastest Tributary config "
              "at the same N by the peer's. *other load* is the CPU time of every other process on "
              "the machine during the run divided by the run's wall time (0 = quiet machine; 2 = "
              "both cores taken by other work).")
    md.append("")
    notes = []
    for r in results:
        if r.get("convert"):
            notes.append(f"* `{r['name']}` N={r['n']:,}: `{r['convert']}`")
        if r.get("done_line"):
            notes.append(f"* `{r['name']}` N={r['n']:,}: `{r['done_line']}`")
        if r["engine"] == "tributary" and r.get("records_seen") not in (None, r["n"]):
            notes.append(f"* **`{r['name']}` read {r['records_seen']:,} records, not {r['n']:,}.**")
        if r.get("errors"):
            notes.append(f"* `{r['name']}` N={r['n']:,} {r['status']}: " + " / ".join(f"`{e.strip()[:200]}`" for e in r["errors"]))
        if r["status"] not in ("ok",) and r["status"].startswith("skipped"):
            notes.append(f"* `{r['name']}`: {r['status']}")
    if notes:
        md.append("Engine lines:")
        md.append("")
        md += notes
        md.append("")
    md.append("Peer installs (pip, into the venv under ${TMPDIR:-/tmp}):")
    md.append("")
    md.append("| package | status | version | seconds |")
    md.append("|---|---|---|---|")
    for k, v in install.items():
        md.append(f"| {k} | {v['status']} | {v['version']} | {v['seconds']} |")
    md.append("")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(dict(machine=machine, install=install, results=results,
                       headline=dict(fastest=h_all, streaming=h_stream, exact_streaming=h_exact)),
                  f, indent=1, default=str)

    # ---------------------------------------------------------------- plot
    try:
        import matplotlib
        matplotlib.use("Agg")
        matplotlib.rcParams["svg.fonttype"] = "none"   # text stays text: a small, greppable SVG
        matplotlib.rcParams["svg.hashsalt"] = "tributary"  # stable ids between runs
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        print("\n".join(md))
        return
    plotted = [r for r in results if r.get("rps_proc")]
    colors = {"tributary": "#c0392b", "numpy": "#7f8c8d", "bytewax": "#2980b9", "pathway": "#8e44ad", "river": "#27ae60"}
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(plotted) + 1.8))
    names = []
    for i, r in enumerate(plotted):
        y = len(plotted) - 1 - i
        c = colors.get(r["engine"], "#555555")
        ax.barh(y + 0.18, r["rps_proc"], height=0.36, color=c)
        if r.get("rps_wall"):
            ax.barh(y - 0.18, r["rps_wall"], height=0.36, color=c, alpha=0.35)
        ax.text(r["rps_proc"] * 1.05, y + 0.18, f"{r['rps_proc']:,.0f}", va="center", fontsize=7)
        if r.get("rps_wall"):
            ax.text(r["rps_wall"] * 1.05, y - 0.18, f"{r['rps_wall']:,.0f} (wall)", va="center", fontsize=7, color="#444444")
        nm = f"{r['peer'].split(' (SGD')[0]} — {r['workers']}"
        if r["n"] != n0:
            nm += f", N={r['n']:,} (start-up amortised)"
        names.append((y, nm))
    ax.set_yticks([y for y, _ in names])
    ax.set_yticklabels([t for _, t in names], fontsize=8)
    ax.set_xscale("log")
    lo = min(min(r["rps_proc"], r.get("rps_wall") or r["rps_proc"]) for r in plotted)
    hi = max(r["rps_proc"] for r in plotted)
    ax.set_xlim(lo / 2, hi * 8)
    ax.set_xlabel("records/s, log scale (solid: N / processing s; light: N / whole-command wall s)")
    oc = [r["other_cores"] for r in results if "other_cores" in r]
    busy = ""
    if oc and statistics.median(oc) > 0.25:
        busy = f"; busy machine: other work used ~{statistics.median(oc):.1f} cores during the runs"
    ax.set_title(f"Windowed OLS per key, 16 keys, d=8, sliding 60 s/10 s, N={n0:,}, same CSV for every engine\n"
                 f"{machine.get('date_utc')}, {machine.get('nproc')} cores {machine.get('cpu')}, "
                 f"{machine.get('mem_total_gib')} GiB{busy}", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "peers.svg"))
    fig.savefig(os.path.join(out, "peers.png"), dpi=110)
    print("\n".join(md))


if __name__ == "__main__":
    main()
