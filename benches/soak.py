#!/usr/bin/env python3
"""Soak run: resident memory of a continuous `quotaflow run` over a long simulated time.

Run it through `scripts/soak` (which starts the services and builds the binary):

    scripts/soak [--events 20000000] [--reps 800] [--csv soak-rss.csv]

Generates the events (the days follow from --events and --reps; 800 reps x ~5.9 years for 20
million) into fresh topics of the suite's broker, starts `quotaflow run` on them, samples its
RSS (/proc) and the messages it has counted (its /metrics) every second until it has read
everything, stops it with SIGTERM and prints the RSS curve by tenths of the stream.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

EVENTS_PER_REP_DAY = 11.62


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def counted(port):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    return sum(int(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("quotaflow_messages_total{"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--reps", type=int, default=800)
    ap.add_argument("--csv", default="soak-rss.csv")
    args = ap.parse_args()
    brokers = os.environ.get("QUOTAFLOW_TEST_BROKERS") or sys.exit("soak: QUOTAFLOW_TEST_BROKERS is not set")
    days = max(1, round(args.events / (EVENTS_PER_REP_DAY * args.reps)))
    work = tempfile.mkdtemp(prefix="quotaflow-soak-")
    tag = f"soak{int(time.time())}"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    text = open("pipelines/default.toml").read()
    text = text.replace('"../sql/', f'"{os.getcwd()}/sql/').replace('= "spm.', f'= "{tag}.spm.')
    text = text.replace('bind = "127.0.0.1:9464"', f'bind = "127.0.0.1:{port}"')
    pipeline = os.path.join(work, "soak.toml")
    open(pipeline, "w").write(text)

    print(f"soak: generating {args.reps} reps x {days} days into {tag}.spm.*", file=sys.stderr, flush=True)
    start = time.strftime("%Y-%m-%d", time.gmtime(time.time() - (days + 2) * 86400))
    out = subprocess.run([args.bin, "generate", "--reps", str(args.reps), "--days", str(days), "--start", start,
                          "--partitions", "8", "--brokers", brokers, "--pipeline", pipeline],
                         capture_output=True, text=True, check=True).stdout
    produced = int(re.search(r"produced (\d+) messages", out).group(1))
    print(f"soak: {produced:,} events produced; running the pipeline", file=sys.stderr, flush=True)
    run = subprocess.Popen([args.bin, "run", "--pipeline", pipeline, "--brokers", brokers,
                            "--output", os.path.join(work, "out")],
                           stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "run.err"), "w"),
                           env={**os.environ, "QUOTAFLOW_LOG": "quotaflow=warn"})
    samples = []
    t0 = time.monotonic()
    while True:
        time.sleep(1)
        if run.poll() is not None:
            sys.exit(f"soak: the pipeline exited ({run.returncode}); see {work}/run.err")
        n = counted(port) or 0
        samples.append((time.monotonic() - t0, rss_mib(run.pid), n))
        if n >= produced:
            break
    run.send_signal(signal.SIGTERM)
    run.wait()
    with open(args.csv, "w") as f:
        f.write("seconds,rss_mib,messages\n")
        for t, r, n in samples:
            f.write(f"{t:.1f},{r:.0f},{n}\n")
    print(f"events {produced:,} ({args.reps} reps x {days} days), {samples[-1][0]:.0f} s, RSS samples in {args.csv}")
    print("share of stream read   RSS MiB (max so far)")
    for tenth in range(1, 11):
        upto = [r for t, r, n in samples if n <= produced * tenth / 10]
        if upto:
            print(f"{tenth * 10:>5} %               {max(upto):.0f}")


if __name__ == "__main__":
    main()
