#!/usr/bin/env python3
"""Soak run: resident memory of a continuous `quotaflow run` over a long simulated time.

Run it through `scripts/soak` (which starts the services and builds the binary):

    scripts/soak [--events 20000000] [--reps 800] [--csv soak-rss.csv] [--rate 100000]

Generates the events (the days follow from --events and --reps; 800 reps x ~5.9 years for 20
million) into fresh topics of the suite's broker and runs `quotaflow run` on them. Two modes:
- without --rate, a backlog replay: every event is produced first, then the pipeline reads them;
- with --rate N, a live stream: the generator produces N messages/s, day after day of simulated
  time, while the pipeline reads them as they arrive (what a long-running pipeline sees).
It samples the pipeline's RSS (/proc) and the messages it has counted (its /metrics) every
second until it has read everything, stops it with SIGTERM and prints the RSS curve by tenths
of the stream, the spread of the medians over its last 80 % (tenths 3-10), and the median by
quarter of the event clock, year by year (what grows with the history shows there, apart from
the fiscal year's own cycle).
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
    """(messages counted, watermark as a date or None, the partition furthest behind its end
    with its lag, (live heap, jemalloc's resident pages, glibc's heap held, glibc's heap in use) in
    MiB or None) from the pipeline's /metrics (glibc's counters None from builds since 2026-12-08,
    whose C code allocates from jemalloc too)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None, None, None, None
    lines = text.splitlines()
    n = sum(int(l.rsplit(" ", 1)[1]) for l in lines if l.startswith("quotaflow_messages_total{"))
    w = [float(l.rsplit(" ", 1)[1]) for l in lines if l.startswith("quotaflow_watermark_seconds")]
    lags = [(int(l.rsplit(" ", 1)[1]), l.split("{", 1)[1].split("}", 1)[0]) for l in lines
            if l.startswith("quotaflow_consumer_lag{")]
    behind = max(lags) if lags else None
    names = ("quotaflow_heap_allocated_bytes", "quotaflow_heap_resident_bytes", "quotaflow_c_heap_held_bytes",
             "quotaflow_c_heap_allocated_bytes")
    values = {l.split(" ", 1)[0]: int(l.rsplit(" ", 1)[1]) / 2**20 for l in lines if l.startswith(names)}
    heap = tuple(values.get(k) for k in names) if all(k in values for k in names[:2]) else None
    return n, (time.strftime("%Y-%m-%d", time.gmtime(w[0])) if w else None), behind, heap


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin")
    ap.add_argument("--report", metavar="CSV", help="print the report of an earlier run's samples and exit")
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--reps", type=int, default=800)
    ap.add_argument("--csv", default="soak-rss.csv")
    ap.add_argument("--rate", type=int, help="produce this many messages/s while the pipeline runs (a live stream)")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            rows = [line.rstrip("\n").split(",") for line in f][1:]
        samples = [(float(r[0]), float(r[1]), int(r[2])) for r in rows]
        clocks = [r[3] if len(r) > 3 and r[3] else None for r in rows]
        # (runs before 2026-12-07's second session have no column for glibc's heap in use, runs
        # since 2026-12-08 none for glibc's heap: the C code allocates from jemalloc too)
        heaps = [tuple(float(v) if v else None for v in r[4:8]) + (None,) * (8 - len(r)) if len(r) > 5 and all(r[4:6])
                 else None for r in rows]
        report(samples, clocks, heaps, max(n for _, _, n in samples))
        return
    if not args.bin:
        ap.error("--bin is required to run a soak")
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

    mode = f"live at {args.rate:,} messages/s" if args.rate else "a backlog replay"
    print(f"soak: {args.reps} reps x {days} days into {tag}.spm.*, {mode}", file=sys.stderr, flush=True)
    start = time.strftime("%Y-%m-%d", time.gmtime(time.time() - (days + 2) * 86400))
    gen = [args.bin, "generate", "--reps", str(args.reps), "--days", str(days), "--start", start,
           "--partitions", "8", "--brokers", brokers, "--pipeline", pipeline]
    if args.rate:
        gen += ["--rate", str(args.rate)]
    generator = subprocess.Popen(gen, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    produced = None

    def generated():
        out = generator.communicate()[0]
        if generator.returncode != 0:
            sys.exit(f"soak: the generator failed ({generator.returncode})")
        return int(re.search(r"produced (\d+) messages", out).group(1))

    if not args.rate:
        produced = generated()
        print(f"soak: {produced:,} events produced; running the pipeline", file=sys.stderr, flush=True)

    def start():
        return subprocess.Popen([args.bin, "run", "--pipeline", pipeline, "--brokers", brokers,
                                 "--output", os.path.join(work, "out")],
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "run.err"), "w"),
                                env={"QUOTAFLOW_LOG": "quotaflow=warn", **os.environ})

    run = start()
    print(f"soak: the pipeline's log is {work}/run.err (QUOTAFLOW_LOG sets its level)", file=sys.stderr, flush=True)
    samples = []
    clocks = []  # the watermark (a date) at each sample
    heaps = []  # (quotaflow's live heap, jemalloc's resident pages, glibc's heap held and in use) in MiB at each sample
    t0 = time.monotonic()
    moved = (t0, 0)  # when the count last moved, and to what
    while True:
        time.sleep(1)
        if run.poll() is not None:
            # Live: the generator may not have created the topics yet when the pipeline started.
            if args.rate and not any(n for _, _, n in samples) and time.monotonic() - t0 < 30:
                run = start()
                continue
            sys.exit(f"soak: the pipeline exited ({run.returncode}); see {work}/run.err")
        n, watermark, behind, heap = counted(port)
        n = n or 0
        samples.append((time.monotonic() - t0, rss_mib(run.pid), n))
        clocks.append(watermark)
        heaps.append(heap)
        if n != moved[1]:
            moved = (time.monotonic(), n)
        elif time.monotonic() - moved[0] > 120:
            run.send_signal(signal.SIGTERM)
            sys.exit(f"soak: nothing read for 120 s at {n:,} messages (is the broker up? an in-memory "
                     f"broker holds every earlier run's topics: `scripts/services stop` frees them); "
                     f"see {work}/run.err")
        if len(samples) % 10 == 0:
            lag = f", furthest behind {behind[1]} by {behind[0]:,}" if behind else ""
            print(f"soak: {samples[-1][0]:.0f} s, RSS {samples[-1][1]:.0f} MiB, {n:,} read, watermark {watermark}{lag}",
                  file=sys.stderr, flush=True)
        if produced is None and generator.poll() is not None:
            produced = generated()
            print(f"soak: {produced:,} events produced", file=sys.stderr, flush=True)
        if produced is not None and n >= produced:
            break
    run.send_signal(signal.SIGTERM)
    run.wait()
    with open(args.csv, "w") as f:
        f.write("seconds,rss_mib,messages,watermark,heap_mib,heap_resident_mib,c_heap_mib,c_heap_used_mib\n")
        for (t, r, n), w, h in zip(samples, clocks, heaps):
            cells = ",".join("" if v is None else f"{v:.0f}" for v in h) if h else ",,,"
            f.write(f"{t:.1f},{r:.0f},{n},{w or ''},{cells}\n")
    print(f"events {produced:,} ({args.reps} reps x {days} days, {mode}), {samples[-1][0]:.0f} s, RSS samples in {args.csv}")
    report(samples, clocks, heaps, produced)
    # tansu's memory storage keeps every run's topics until it stops: about 4 GB a run here,
    # and the fourth soak on one broker (after three soaks and two replays) filled this
    # machine's 23 GB and stalled.
    print("soak: the broker keeps this run's topics in memory; `scripts/services stop` frees them "
          "(do so between runs)", file=sys.stderr)


def median(values):
    """The upper median of `values`, or None when there are none."""
    v = sorted(values)
    return v[len(v) // 2] if v else None


def report(samples, clocks, heaps, produced):
    """The RSS curve of `samples` ((seconds, RSS MiB, messages read)), with the watermark and
    the heap ((live, jemalloc's resident, glibc's held, glibc's in use) MiB) of each, for a stream
    of `produced` messages."""
    print("share of stream read   RSS MiB: max so far, median of the tenth   live heap, jemalloc's pages"
          "[, glibc's heap held, in use: builds before 2026-12-08] (medians)")
    for tenth in range(1, 11):
        upto = [r for t, r, n in samples if n <= produced * tenth / 10]
        inside = [i for i, (t, r, n) in enumerate(samples) if produced * (tenth - 1) / 10 < n <= produced * tenth / 10]
        this = median(samples[i][1] for i in inside)
        # each heap column's median over the samples that have it (older CSVs lack the last)
        cols = [median(heaps[i][k] for i in inside if heaps[i] is not None and heaps[i][k] is not None)
                for k in range(4)]
        if upto:
            rss = f"{this:.0f}" if this is not None else "-"
            live = ", ".join(f"{v:.0f}" for v in cols if v is not None) or "-"
            print(f"{tenth * 10:>5} %               {max(upto):>5.0f}, {rss:<32} {live}")
    medians = []
    for tenth in range(3, 11):
        this = median(r for t, r, n in samples if produced * (tenth - 1) / 10 < n <= produced * tenth / 10)
        if this is not None:
            medians.append(this)
    if medians:
        lo, hi = min(medians), max(medians)
        mid = (lo + hi) / 2
        print(f"last 80 % (tenths 3-10): medians {lo:.0f}-{hi:.0f} MiB, {mid:.0f} +/- {100 * (hi - mid) / mid:.1f} %")
    # The state follows the fiscal year (a year's deals stay until it ends), so a tenth's median
    # also depends on where in the year it falls: the same quarter of successive years shows
    # what grows with the history. (The default pipeline's fiscal year starts in January.)
    # glibc's held heap is its arenas' size, pages trimmed after a cut included: an upper bound
    # of its share of RSS, which the last table holds with code and stacks.
    outside = [r - h[1] if h else None for (_, r, _), h in zip(samples, heaps)]
    for what, values in (("RSS", [r for _, r, _ in samples]), ("live heap", [h[0] if h else None for h in heaps]),
                         ("glibc's heap held (librdkafka; trimmed pages included)", [h[2] if h else None for h in heaps]),
                         ("glibc's heap in use (librdkafka's buffers and messages)", [h[3] if h and len(h) > 3 else None for h in heaps]),
                         ("RSS outside jemalloc's pages (code, stacks; glibc's heap before 2026-12-08)", outside)):
        by = {}
        for v, w in zip(values, clocks):
            if w and v is not None:
                by.setdefault((int(w[:4]), (int(w[5:7]) - 1) // 3 + 1), []).append(v)
        if by:
            print(f"{what} MiB, median by quarter of the event clock (the watermark)")
            print("year      Q1     Q2     Q3     Q4")
            for year in sorted({y for y, _ in by}):
                cells = []
                for q in range(1, 5):
                    v = median(by.get((year, q), []))
                    cells.append(f"{v:>6.0f}" if v is not None else "     -")
                print(f"{year}  {' '.join(cells)}")


if __name__ == "__main__":
    main()
