#!/usr/bin/env python3
"""Freshness: how long after `POST /data` answers does `/model` reflect the batch?

Starts `tributary run --source http --serve 127.0.0.1:0` (loopback only), offers a load
of records per second as POSTs of one new key each, and after every answer asks
`GET /model?key=K&after_batch=B` (the read waits until batch B is folded in). The time
from the POST's answer to that read's answer is the freshness; p50 and p99 per load and
worker count. Standard library only.

    python3 benches/freshness/run.py [--bin target/release/tributary] [--seconds 8]
"""
import argparse
import json
import re
import subprocess
import tempfile
import threading
import time
import urllib.request

LOADS = [(1_000, 100), (10_000, 500), (100_000, 5_000)]  # (records/s, records per POST)


def start(binary, workers):
    err = tempfile.NamedTemporaryFile(delete=False)
    proc = subprocess.Popen(
        [binary, "run", "-q", "--source", "http", "--serve", "127.0.0.1:0",
         "--features", "x0,x1", "--window", "tumbling:10s", "--lateness", "1s",
         "--out", "/dev/null", "-w", str(workers)],
        stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        text = open(err.name).read()
        m = re.search(r"serving on http://(\S+)", text)
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {text}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start")


def body(key, t0, rows):
    lines = ["ts,key,x0,x1,y"]
    for i in range(rows):
        x0, x1 = (i % 17) / 17.0, (i % 5) / 5.0
        lines.append(f"{t0 + i},{key},{x0},{x1},{1 + 2 * x0 - x1 + 0.01 * (i % 3)}")
    return ("\n".join(lines) + "\n").encode()


def measure(addr, rate, per_post, seconds):
    posts_per_s = rate / per_post
    lat = []
    t0 = 1_700_000_000_000
    start_wall = time.time()
    k = 0
    while time.time() - start_wall < seconds:
        due = start_wall + k / posts_per_s
        if time.time() < due:
            time.sleep(due - time.time())
        key = f"f{k}"
        req = urllib.request.Request(f"http://{addr}/data", data=body(key, t0 + k * per_post, per_post),
                                     headers={"Content-Type": "text/csv"})
        answer = json.load(urllib.request.urlopen(req, timeout=30))
        answered = time.perf_counter()
        url = f"http://{addr}/model?key={key}&after_batch={answer['batch']}&wait=10s"
        model = json.load(urllib.request.urlopen(url, timeout=30))
        lat.append(time.perf_counter() - answered)
        n = (model.get("open") or model.get("final") or {}).get("n")
        if n != per_post and (model.get("final") or {}).get("n") is None:
            raise SystemExit(f"batch {answer['batch']}: served n {n}, posted {per_post}")
        k += 1
    achieved = k * per_post / (time.time() - start_wall)
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3
    return achieved, len(lat), pick(0.5), pick(0.99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/tributary")
    ap.add_argument("--seconds", type=float, default=8)
    a = ap.parse_args()
    print("| workers | offered records/s | achieved | POSTs | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for workers in (1, 2):
        for rate, per_post in LOADS:
            proc, addr = start(a.bin, workers)
            try:
                achieved, n, p50, p99 = measure(addr, rate, per_post, a.seconds)
            finally:
                proc.kill()
                proc.wait()
            print(f"| {workers} | {rate:,} | {achieved:,.0f} | {n} | {p50:.2f} | {p99:.2f} |", flush=True)


if __name__ == "__main__":
    main()
