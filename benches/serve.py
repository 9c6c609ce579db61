"""Load benchmark of `quotaflow serve`: N concurrent clients replay a sales dashboard's queries
for a fixed time against a real output, and the figures are printed as JSON.

    python3 benches/serve.py --bin target/release/quotaflow --output OUT [--clients 50] [--seconds 60]

Each client is its own psycopg 3 connection on its own thread (the way a BI tool's connection
pool runs), picking the dashboard's queries in turn; one of them is parameterised by a random
rep and prepared server-side. The server is started by this script (password auth, loopback,
free ports) and stopped at the end; its resident memory is read from /proc. Client and server
share the machine's cores, so the figures are a floor for a server on its own host.
"""
import argparse
import json
import os
import random
import re
import subprocess
import threading
import time

import psycopg

DASHBOARD = [
    # The morning view: where each team stands this quarter, the forecast, the leaders, the
    # freshness line, last week's activity, and one rep's card (parameterised).
    ("team_attainment", "SELECT entity_id, quota, closed_won, attainment, pacing, attainment_band "
     "FROM attainment WHERE level = 'team' AND period_type = 'quarter' AND is_current "
     "ORDER BY attainment DESC NULLS LAST", None),
    ("region_forecast", "SELECT entity_id, closed_won, commit_forecast, best_case_forecast, quota, coverage "
     "FROM forecast WHERE level = 'region' AND period_type = 'quarter' ORDER BY period_start DESC, entity_id "
     "LIMIT 20", None),
    ("leaderboard", "SELECT rep_id, points, rank, won_amount FROM leaderboard "
     "WHERE period_type = 'month' ORDER BY period_start DESC, rank LIMIT 20", None),
    ("data_as_of", "SELECT snapshot_id, as_of, written_at FROM snapshots ORDER BY snapshot_id DESC LIMIT 1", None),
    ("activity_week", "SELECT rep_id, SUM(calls) AS calls, SUM(meetings_held) AS meetings FROM rep_daily "
     "WHERE day >= (SELECT MAX(day) FROM rep_daily) - INTERVAL '7 days' GROUP BY rep_id "
     "ORDER BY calls DESC LIMIT 10", None),
    ("rep_card", "SELECT period_type, period_start, quota, closed_won, attainment FROM attainment "
     "WHERE level = 'rep' AND entity_id = %s ORDER BY period_type, period_start", "rep"),
]


def start_server(binary, output, password):
    env = dict(os.environ, QUOTAFLOW_SERVE_PASSWORD=password)
    p = subprocess.Popen([binary, "serve", "--output", output, "--pg", "127.0.0.1:0",
                          "--http", "127.0.0.1:0"], env=env, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        m = re.search(r"PostgreSQL on 127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, int(m.group(1))
    raise SystemExit("quotaflow serve did not start")


def rss_mib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    password = "bench-password"
    server, port = start_server(args.bin, args.output, password)
    dsn = f"host=127.0.0.1 port={port} user=quotaflow dbname=quotaflow password={password}"
    try:
        with psycopg.connect(dsn) as c:
            reps = [r[0] for r in c.execute(
                "SELECT DISTINCT entity_id FROM attainment WHERE level = 'rep'").fetchall()]
        rss_idle, _ = rss_mib(server.pid)
        latencies = {name: [] for name, _, _ in DASHBOARD}
        errors = []
        lock = threading.Lock()
        start = threading.Barrier(args.clients + 1)
        deadline = [0.0]

        def client(i):
            rnd = random.Random(i)
            conn = psycopg.connect(dsn, autocommit=True)
            start.wait()
            n = i
            mine = {name: [] for name, _, _ in DASHBOARD}
            while time.monotonic() < deadline[0]:
                name, sql, param = DASHBOARD[n % len(DASHBOARD)]
                n += 1
                t = time.perf_counter()
                try:
                    if param:
                        conn.execute(sql, (rnd.choice(reps),), prepare=True).fetchall()
                    else:
                        conn.execute(sql).fetchall()
                    mine[name].append(time.perf_counter() - t)
                except psycopg.Error as e:
                    with lock:
                        errors.append(f"{name}: {e}")
            conn.close()
            with lock:
                for k, v in mine.items():
                    latencies[k].extend(v)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        deadline[0] = time.monotonic() + args.seconds
        started = time.monotonic()
        start.wait()
        peak = 0.0
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mib(server.pid)[0])
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        _, hwm = rss_mib(server.pid)
        every = sorted(x for v in latencies.values() for x in v)

        def pct(xs, p):
            return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2) if xs else None

        print(json.dumps({
            "clients": args.clients,
            "seconds": round(elapsed, 1),
            "queries": len(every),
            "queries_per_second": round(len(every) / elapsed, 1),
            "p50_ms": pct(every, 0.50),
            "p99_ms": pct(every, 0.99),
            "per_query": {k: {"n": len(v), "p50_ms": pct(sorted(v), 0.5), "p99_ms": pct(sorted(v), 0.99)}
                          for k, v in latencies.items()},
            "errors": len(errors),
            "first_errors": errors[:3],
            "server_rss_idle_mib": round(rss_idle, 1),
            "server_rss_peak_mib": round(max(peak, hwm), 1),
        }, indent=2))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
