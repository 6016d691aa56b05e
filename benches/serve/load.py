"""Ingest load on a running `tributary run --source http --serve HOST:PORT --features x0,x1,x2`:
N_CLIENTS concurrent clients, each POSTing POSTS CSV bodies of PER records (keys k0..k15),
retrying 503 answers. Prints records/s accepted and p50/p99 answer latency.

    python3 benches/serve/load.py [PORT] [CLIENTS] [POSTS] [PER]
"""
import http.client, threading, time, random, sys, json

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
N_CLIENTS, POSTS, PER = (int(a) for a in (sys.argv[2:5] + ["8", "250", "1000"][len(sys.argv[2:5]):]))
random.seed(7)
def body(c, p):
    rows = ["ts,key,x0,x1,x2,y"]
    base = 1700000000000 + (p * N_CLIENTS + c) * PER
    for i in range(PER):
        x = [random.gauss(0,1) for _ in range(3)]
        rows.append(f"{base+i},k{i%16},{x[0]:.6f},{x[1]:.6f},{x[2]:.6f},{1+x[0]-2*x[1]+0.5*x[2]+random.gauss(0,.1):.6f}")
    return "\n".join(rows).encode()
bodies = [[body(c, p) for p in range(POSTS)] for c in range(N_CLIENTS)]
lat = []; accepted = [0]; retries=[0]; lock = threading.Lock()
def client(c):
    conn = http.client.HTTPConnection("127.0.0.1", PORT)
    for p in range(POSTS):
        while True:
            t = time.perf_counter()
            conn.request("POST", "/data", bodies[c][p], {"Content-Type": "text/csv"})
            r = conn.getresponse(); d = r.read()
            dt = time.perf_counter() - t
            if r.status == 200:
                with lock: lat.append(dt); accepted[0] += json.loads(d)["accepted"]
                break
            with lock: retries[0] += 1
            time.sleep(0.01)
t0 = time.perf_counter()
ts = [threading.Thread(target=client, args=(c,)) for c in range(N_CLIENTS)]
[t.start() for t in ts]; [t.join() for t in ts]
el = time.perf_counter() - t0
lat.sort()
print(f"accepted {accepted[0]} records in {el:.2f}s = {accepted[0]/el:,.0f} records/s; posts {len(lat)}; 503 retried {retries[0]}; p50 {lat[len(lat)//2]*1000:.2f} ms p99 {lat[int(len(lat)*0.99)]*1000:.2f} ms")
