"""Load on the reward server: concurrent /score clients, latency percentiles and throughput.

    python -m minigrm.bench_serve                       # starts a server on the demo GRM, both parts
    python -m minigrm.bench_serve --url http://127.0.0.1:8000 --clients 64 --seconds 60

Part 1 (load): `--clients` threads each send /score requests back to back for `--seconds`
(a demo-style arithmetic query, 2-4 responses, k judgments); every answer is checked to belong
to its request (its number of scores) and counted once. Prints requests/s, judgments/s and p50 /
p99 latency. Part 2 (batching): the same --requests requests sent one at a time, then by 32
concurrent clients: the ratio of their throughputs is what continuous batching across requests
buys (the issue's target on CPU: >= 3x). Figures vary with the machine's load; run it on a
quiet one and quote the machine.
"""
import argparse
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from .integrations import post

DEMO = Path(__file__).resolve().parent / "demo"


def request_body(i: int, k: int, max_tokens: int) -> dict:
    rng = random.Random(i)
    a, b = rng.randrange(10, 90), rng.randrange(10, 90)
    n = 2 + i % 3
    return {"prompt": f"What is {a} + {b}?", "responses": [f"{a} + {b} = {a + b + d}" for d in range(n)],
            "k": k, "seed": i, "max_tokens": max_tokens}


def one(url: str, i: int, k: int, max_tokens: int) -> float:
    t = time.perf_counter()
    out = post(url, "/score", request_body(i, k, max_tokens))
    if out["n_valid"] + out["n_invalid"] != k or (out["scores"] is not None and len(out["scores"]) != 2 + i % 3):
        raise RuntimeError(f"request {i}: an answer that is not its own: {out}")
    return time.perf_counter() - t


def load(url: str, clients: int, seconds: float, k: int, max_tokens: int) -> dict:
    latencies, lock, counter, stop = [], threading.Lock(), iter(range(10**9)), time.perf_counter() + seconds

    def client():
        while time.perf_counter() < stop:
            with lock:
                i = next(counter)
            dt = one(url, i, k, max_tokens)
            with lock:
                latencies.append(dt)
    wall = run_clients(client, clients)
    q = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "wall_s": wall, "req_per_s": len(latencies) / wall,
            "judgments_per_s": len(latencies) * k / wall, "p50_s": q[49], "p99_s": q[98]}


def run_clients(client, n: int) -> float:
    """Run `client` in n threads at once; -> wall seconds until all are done."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def batching(url: str, requests: int, k: int, max_tokens: int, clients: int = 32) -> dict:
    t0 = time.perf_counter()
    for i in range(requests):
        one(url, 10**6 + i, k, max_tokens)
    serial = time.perf_counter() - t0
    ids = iter(range(requests))
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                i = next(ids, None)
            if i is None:
                return
            one(url, 10**6 + i, k, max_tokens)
    concurrent = run_clients(client, clients)
    return {"requests": requests, "serial_s": serial, "concurrent_s": concurrent, "clients": clients,
            "speedup": serial / concurrent}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running server (default: start one on the demo GRM)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients in the load part")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the load part")
    ap.add_argument("--requests", type=int, default=64, help="requests in the batching part")
    ap.add_argument("--k", type=int, default=4, help="judgments per request")
    ap.add_argument("--max-tokens", type=int, default=96, help="max tokens per judgment")
    ap.add_argument("--port", type=int, default=8017, help="port of the server this script starts")
    args = ap.parse_args(argv)
    proc, url = None, args.url
    if url is None:
        url = f"http://127.0.0.1:{args.port}"
        proc = subprocess.Popen([sys.executable, "-m", "minigrm.serve", "--model", str(DEMO / "grm"),
                                 "--port", str(args.port), "--device", "cpu"])
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
    try:
        one(url, -1, args.k, args.max_tokens)  # warm-up
        r = load(url, args.clients, args.seconds, args.k, args.max_tokens)
        print(f"load: {args.clients} clients x {args.seconds:.0f} s: {r['requests']} requests answered "
              f"({r['req_per_s']:.2f}/s, {r['judgments_per_s']:.1f} judgments/s), latency p50 {r['p50_s']:.2f} s, "
              f"p99 {r['p99_s']:.2f} s")
        b = batching(url, args.requests, args.k, args.max_tokens)
        print(f"batching: {b['requests']} requests one at a time {b['serial_s']:.1f} s, by {b['clients']} concurrent "
              f"clients {b['concurrent_s']:.1f} s: {b['speedup']:.2f}x")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
