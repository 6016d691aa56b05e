#!/usr/bin/env python3
"""Convert `tributary run --out OUT.jsonl` model lines to the peers' coefficient CSV
(`window_start,key,b0..b8`, header first) so that shared/peers/compare.py can check them.

Keeps only lines with "final": true; if a (window_start, key) has several final lines the
one with the highest "revision" (if present) wins. Prints a one-line summary of what it saw:

  tributary_to_csv: lines=... final=... provisional=... dup_final=... null_coef=... rows=...

Usage: python tributary_to_csv.py OUT.jsonl OUT.csv
"""
import json
import sys


def main():
    src, dst = sys.argv[1], sys.argv[2]
    best = {}  # (window_start, key) -> (revision, coef)
    lines = final = prov = dup = null_coef = bad = 0
    widths = set()
    with open(src) as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            lines += 1
            try:
                d = json.loads(raw)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not d.get("final", False):
                prov += 1
                continue
            final += 1
            ws = int(d["window_start"])
            if "window_end" in d:
                widths.add(int(d["window_end"]) - ws)
            key = int(d["key"])  # the CSV key column is an integer; Tributary may echo it as text
            rev = d.get("revision", 0) or 0
            coef = d.get("coef")
            if coef is None:
                null_coef += 1
                continue
            k = (ws, key)
            if k in best:
                dup += 1
                if rev < best[k][0]:
                    continue
            best[k] = (rev, coef)
    with open(dst, "w") as f:
        f.write("window_start,key," + ",".join(f"b{i}" for i in range(9)) + "\n")
        for (ws, key), (_, coef) in sorted(best.items()):
            f.write(f"{ws},{key}," + ",".join(repr(float(c)) for c in coef) + "\n")
    print(f"tributary_to_csv: lines={lines} final={final} provisional={prov} dup_final={dup} "
          f"null_coef={null_coef} unparsable={bad} rows={len(best)} window_lengths_ms={sorted(widths)}")


if __name__ == "__main__":
    main()
