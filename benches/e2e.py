#!/usr/bin/env python3
"""End-to-end benchmark of quotaflow against the real broker of the test suite, in one run.

Run it through `scripts/bench` (which starts the services and builds the binary):

    scripts/bench [--events N] [--days D] [--history-days H] [--freshness-seconds S] [--trigger-interval 2s] [--json FILE]

It measures, on the same broker and the same generated events:
  1. the limit: `quotaflow limit`, the consumer `run` uses with nothing behind it;
  2. `quotaflow run --once` to the final snapshot: events/s, CPU s per million, peak RSS;
  3. freshness: a continuous `quotaflow run` while events are produced at half the measured
     throughput; for every event, the time from its produce to the first snapshot holding it
     (the checkpoint's `written_at`, taken just before `_checkpoints/<id>.json` and `_latest`
     are put). With `--history-days H`, H days of history of the same reps are produced and
     read first, so every measured snapshot is an incremental one over a long history;
  4. the alternative: DuckDB computing `rep_daily` and quarterly `attainment` in batch from the
     same events as JSONL files on local disk, and writing them as Parquet;
then prints one table with the ratios and writes it as JSON.
"""

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta

# Events per rep per day of the generator (1,004,599 events for 950 reps x 91 days).
EVENTS_PER_REP_DAY = 11.62


def reps_for(events, days):
    """How many reps the generator needs for about `events` events over `days` days."""
    return max(8, round(events / (EVENTS_PER_REP_DAY * days)))


def days_ago(n):
    """The date n days before today (the generated events end today: the contract refuses
    events too far ahead of the wall clock)."""
    return (date.today() - timedelta(days=n)).isoformat()


def produced(text):
    """The message count `quotaflow generate` reports."""
    return int(re.search(r"produced (\d+) messages", text).group(1))


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def timed(cmd, env=None, stdout_path=None):
    """Runs cmd; returns (stdout text, wall s, cpu s, peak RSS MiB) of that process alone."""
    out = open(stdout_path, "w+") if stdout_path else tempfile.TemporaryFile("w+")
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read()
    if code != 0:
        sys.exit(f"bench: {' '.join(cmd[:2])} failed ({code}):\n{err[-3000:]}")
    return text, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def pipeline_file(work, tag, extra_snapshot="", once_trigger_interval=None):
    root = os.getcwd()
    text = open("pipelines/default.toml").read()
    if once_trigger_interval:
        text = re.sub(r'once_trigger_interval = "[^"]*"', f'once_trigger_interval = "{once_trigger_interval}"', text)
    text = text.replace('"../sql/', f'"{root}/sql/').replace('= "spm.', f'= "{tag}.spm.')
    if extra_snapshot:
        text = re.sub(r'(?m)^trigger_interval = "[^"]*"', "", text)
        text = re.sub(r"retention = \d+", "", text)
        text = text.replace("[snapshot]\n", f"[snapshot]\n{extra_snapshot}\n")
    path = os.path.join(work, f"{tag}.toml")
    open(path, "w").write(text)
    return path


def read_count(text, what):
    m = re.search(r"read (\d+) messages \(([\d.]+) MB\) in ([\d.]+) s", text)
    if not m:
        sys.exit(f"bench: no count in the output of {what}: {text!r}")
    return int(m.group(1)), float(m.group(2)), float(m.group(3))


DUCKDB_SQL = """
SET TimeZone = 'UTC';
CREATE TABLE activities AS SELECT * FROM read_json('{dir}/*activities.jsonl', format = 'newline_delimited',
  columns = {{event_id: 'VARCHAR', occurred_at: 'TIMESTAMPTZ', rep_id: 'VARCHAR', activity_type: 'VARCHAR',
             outcome: 'VARCHAR', duration_s: 'BIGINT', deal_id: 'VARCHAR'}});
CREATE TABLE deals AS SELECT * FROM read_json('{dir}/*deals.jsonl', format = 'newline_delimited',
  columns = {{deal_id: 'VARCHAR', version: 'BIGINT', occurred_at: 'TIMESTAMPTZ', rep_id: 'VARCHAR',
             stage: 'VARCHAR', amount: 'DECIMAL(18,2)', currency: 'VARCHAR', close_date: 'DATE'}});
CREATE TABLE quotas AS SELECT * FROM read_json('{dir}/*quotas.jsonl', format = 'newline_delimited',
  columns = {{rep_id: 'VARCHAR', period_start: 'DATE', period_end: 'DATE', amount: 'DECIMAL(18,2)',
             currency: 'VARCHAR', version: 'BIGINT'}});
CREATE TABLE roster AS SELECT * FROM read_json('{dir}/*roster.jsonl', format = 'newline_delimited',
  columns = {{rep_id: 'VARCHAR', version: 'BIGINT', team_id: 'VARCHAR', region: 'VARCHAR'}});
CREATE TABLE fx AS SELECT * FROM read_json('{dir}/*fx_rates.jsonl', format = 'newline_delimited',
  columns = {{currency: 'VARCHAR', effective_date: 'DATE', rate_to_corporate: 'DECIMAL(24,12)', version: 'BIGINT'}});

-- rep_daily: each event_id once, one row per rep and day.
CREATE TABLE rep_daily AS
WITH a AS (SELECT * FROM activities QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY occurred_at) = 1)
SELECT rep_id, CAST(occurred_at AS DATE) AS day,
  count(*) FILTER (WHERE activity_type = 'call') AS calls,
  count(*) FILTER (WHERE activity_type = 'email') AS emails,
  count(*) FILTER (WHERE activity_type = 'meeting') AS meetings,
  count(*) FILTER (WHERE activity_type = 'webinar') AS webinars,
  count(*) FILTER (WHERE activity_type = 'demo') AS demos,
  count(*) FILTER (WHERE activity_type = 'task') AS tasks,
  count(*) AS activities,
  coalesce(sum(duration_s) FILTER (WHERE activity_type = 'call'), 0) AS call_seconds,
  count(*) FILTER (WHERE activity_type = 'call' AND outcome = 'connected') AS connected_calls,
  count(*) FILTER (WHERE activity_type = 'email' AND outcome = 'replied') AS replied_emails,
  count(*) FILTER (WHERE activity_type IN ('meeting', 'demo') AND outcome = 'held') AS meetings_held
FROM a GROUP BY ALL;

-- attainment per quarter: latest versions, amounts in USD at the rate in force, rolled up.
CREATE TABLE attainment AS
WITH rates AS (SELECT * FROM fx QUALIFY row_number() OVER (PARTITION BY currency, effective_date ORDER BY version DESC) = 1),
q AS (SELECT * FROM quotas QUALIFY row_number() OVER (PARTITION BY rep_id, period_start ORDER BY version DESC) = 1),
d AS (SELECT * FROM deals QUALIFY row_number() OVER (PARTITION BY deal_id ORDER BY version DESC) = 1),
r AS (SELECT * FROM roster QUALIFY row_number() OVER (PARTITION BY rep_id ORDER BY version DESC) = 1),
quota AS (
  SELECT q.rep_id, q.period_start, round(q.amount * coalesce(rates.rate_to_corporate, 1), 2) AS quota
  FROM q ASOF LEFT JOIN rates ON q.currency = rates.currency AND q.period_start >= rates.effective_date),
won AS (
  SELECT d.rep_id, CAST(date_trunc('quarter', d.close_date) AS DATE) AS period_start,
         sum(round(d.amount * coalesce(rates.rate_to_corporate, 1), 2)) AS closed_won
  FROM d ASOF LEFT JOIN rates ON d.currency = rates.currency AND d.close_date >= rates.effective_date
  WHERE d.stage = 'closed_won' GROUP BY ALL),
rep_q AS (
  SELECT coalesce(quota.rep_id, won.rep_id) AS rep_id, coalesce(quota.period_start, won.period_start) AS period_start,
         quota.quota, coalesce(won.closed_won, 0) AS closed_won
  FROM quota FULL JOIN won ON quota.rep_id = won.rep_id AND quota.period_start = won.period_start),
levels AS (
  SELECT 'rep' AS level, rep_id AS entity_id, period_start, quota, closed_won FROM rep_q
  UNION ALL SELECT 'team', r.team_id, period_start, sum(quota), sum(closed_won) FROM rep_q JOIN r USING (rep_id) GROUP BY ALL
  UNION ALL SELECT 'region', r.region, period_start, sum(quota), sum(closed_won) FROM rep_q JOIN r USING (rep_id) GROUP BY ALL
  UNION ALL SELECT 'company', 'all', period_start, sum(quota), sum(closed_won) FROM rep_q GROUP BY ALL)
SELECT *, closed_won / nullif(quota, 0) AS attainment FROM levels;

COPY rep_daily TO '{out}/rep_daily.parquet' (FORMAT parquet);
COPY attainment TO '{out}/attainment.parquet' (FORMAT parquet);
"""


def duckdb_batch(jsonl_dir, out_dir):
    import duckdb

    os.makedirs(out_dir, exist_ok=True)
    con = duckdb.connect()
    start = time.monotonic()
    con.execute(DUCKDB_SQL.format(dir=jsonl_dir, out=out_dir))
    secs = time.monotonic() - start
    activities, rows = con.execute("SELECT sum(activities), count(*) FROM rep_daily").fetchone()
    return secs, int(activities), int(rows)


def checkpoints(out):
    """[(written_at in ms, offsets)] of every checkpoint of the output, oldest first."""
    found = []
    for path in glob.glob(os.path.join(out, "_checkpoints", "*.json")):
        m = json.load(open(path))
        written = datetime.fromisoformat(m["written_at"].replace("Z", "+00:00")).timestamp() * 1000
        found.append((written, m["offsets"]))
    return sorted(found, key=lambda x: x[0])


def percentile(sorted_pairs, total, q):
    """sorted_pairs: [(value, weight)] ascending; the value at weighted quantile q."""
    want, seen = q * total, 0
    for value, weight in sorted_pairs:
        seen += weight
        if seen >= want:
            return value
    return sorted_pairs[-1][0]


def wait_for(out, messages, timeout):
    """Polls until a checkpoint of `out` includes `messages` messages (the run reads ahead of
    what the log says, so a poll is the only way to see a snapshot land)."""
    deadline = time.monotonic() + timeout
    while True:
        ms = checkpoints(out)
        if ms and sum(sum(p.values()) for p in ms[-1][1].values()) >= messages:
            return
        if time.monotonic() > deadline:
            sys.exit(f"bench: the freshness run did not catch up with {messages:,} messages within {timeout} s")
        time.sleep(0.2)


def freshness(args, work, brokers, rate):
    tag = f"fresh{int(time.time())}"
    pipeline = pipeline_file(
        work, tag, f'trigger_interval = "{args.trigger_interval}"\nretention = 1000000'
    )
    out = os.path.join(work, "fresh-out")
    events = int(rate * args.freshness_seconds)
    if args.history_days:
        # The reps of the main run, over as many new days as the events fill.
        reps = reps_for(args.events, args.days)
        days = max(1, round(events / (EVENTS_PER_REP_DAY * reps)))
    else:
        reps = reps_for(events, args.days)
        days = args.days
    # Topics first, so the pipeline is assigned to them before the first event is produced.
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    names = [f"{tag}.spm.{t}" for t in ("activities", "deals", "quotas", "roster", "surveys", "fx_rates")]
    for f in admin.create_topics([NewTopic(n, 8, 1) for n in names]).values():
        f.result()
    run = subprocess.Popen(
        [args.bin, "run", "--pipeline", pipeline, "--brokers", brokers, "--output", out],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "fresh-run.err"), "w"),
        env={**os.environ, "QUOTAFLOW_LOG": "quotaflow=warn,quotaflow::pipeline::checkpoint=info"},
    )
    time.sleep(3)  # connect and assign (the run logs nothing before its first snapshot)
    history = {}
    if args.history_days:
        log(f"freshness: {reps} reps x {args.history_days} days of history first")
        text, _, _, _ = timed([args.bin, "generate", "--reps", str(reps), "--days", str(args.history_days),
                               "--start", days_ago(days + args.history_days), "--seed", "11", "--brokers", brokers, "--pipeline", pipeline])
        history["events"] = produced(text)
        waited = time.monotonic()
        wait_for(out, history["events"], 1200)
        history["caught_up_s"] = round(time.monotonic() - waited, 1)
        history["snapshots"] = len(checkpoints(out))
        # The measured events follow the history (another seed: new ids).
    delivery_log = os.path.join(work, "deliveries.csv")
    log(f"freshness: producing ~{events:,} events at {rate:,.0f}/s with a {args.trigger_interval} trigger")
    text, wall, _, _ = timed([args.bin, "generate", "--reps", str(reps), "--days", str(days),
                              "--start", days_ago(days), "--brokers", brokers, "--pipeline", pipeline,
                              "--rate", str(int(rate)), "--delivery-log", delivery_log])
    live = produced(text)
    wait_for(out, live + history.get("events", 0), 300)
    run.send_signal(signal.SIGTERM)
    _, status, ru = os.wait4(run.pid, 0)
    ms = checkpoints(out)
    first_measured = history.get("snapshots", 0)
    pairs, total = [], 0
    for line in open(delivery_log):
        sent_ms, topic, part, max_off, count = line.strip().split(",")
        sent_ms, max_off, count = int(sent_ms), int(max_off), int(count)
        first = next(w for w, offs in ms if offs.get(topic, {}).get(part, 0) > max_off)
        pairs.append((first - sent_ms, count))
        total += count
    pairs.sort()
    # What each measured snapshot cost, from its cut to its `_latest` (the run's log).
    took = [int(m.group(1)) for line in open(os.path.join(work, "fresh-run.err"))
            if "snapshot written" in line and (m := re.search(r"\bms=(\d+)", line))]
    took = sorted(took[first_measured:]) or [0]
    return {
        "snapshot_ms_p50": took[len(took) // 2],
        "snapshot_ms_max": took[-1],
        "history": history,
        "snapshots_measured": len(ms) - first_measured,
        "events": live,
        "rate_target": int(rate),
        "rate_achieved": round(live / wall),
        "trigger_interval": args.trigger_interval,
        "snapshots": len(ms),
        "p50_ms": percentile(pairs, total, 0.5),
        "p99_ms": percentile(pairs, total, 0.99),
        "max_ms": pairs[-1][0],
        "peak_rss_mib": round(ru.ru_maxrss / 1024),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the quotaflow binary")
    ap.add_argument("--events", type=int, default=5_000_000, help="events to generate (default 5,000,000)")
    ap.add_argument("--days", type=int, default=91, help="days of history they span (default 91)")
    ap.add_argument("--freshness-seconds", type=float, default=30, help="how long to produce for the freshness run")
    ap.add_argument("--trigger-interval", default="2s", help="snapshot trigger of the freshness run")
    ap.add_argument("--once-trigger-interval", default=None,
                    help="snapshot interval of the --once run (default: the pipeline's, 60s)")
    ap.add_argument("--history-days", type=int, default=0,
                    help="days of history (of the main run's reps) the freshness run reads before it is measured")
    ap.add_argument("--json", default="bench-results.json", help="where to write the figures")
    args = ap.parse_args()
    brokers = os.environ.get("QUOTAFLOW_TEST_BROKERS") or sys.exit("bench: QUOTAFLOW_TEST_BROKERS is not set")
    work = tempfile.mkdtemp(prefix="quotaflow-bench-")
    reps = reps_for(args.events, args.days)
    start = days_ago(args.days)
    tag = f"bench{int(time.time())}"
    pipeline = pipeline_file(work, tag, once_trigger_interval=args.once_trigger_interval)

    log(f"generating {reps} reps x {args.days} days into fresh topics ({tag}.spm.*)")
    text, gen_wall, _, _ = timed([args.bin, "generate", "--reps", str(reps), "--days", str(args.days),
                                  "--start", start, "--partitions", "8", "--brokers", brokers,
                                  "--pipeline", pipeline])
    events = produced(text)

    log("limit: no-op consumer")
    text, limit_wall, limit_cpu, limit_rss = timed([args.bin, "limit", "--pipeline", pipeline, "--brokers", brokers])
    limit_n, limit_mb, limit_secs = read_count(text, "limit")

    log("quotaflow run --once")
    out = os.path.join(work, "out")
    text, once_wall, once_cpu, once_rss = timed([args.bin, "run", "--once", "--pipeline", pipeline,
                                                 "--brokers", brokers, "--output", out])
    once_n, once_mb, once_secs = read_count(text, "run --once")
    q = subprocess.run([args.bin, "sql", "--output", out, "--format", "csv",
                        "SELECT SUM(activities) AS a, COUNT(*) AS n FROM rep_daily"],
                       capture_output=True, text=True, check=True).stdout.splitlines()[1].split(",")
    qf_activities, qf_rows = int(q[0]), int(q[1])

    log("DuckDB batch over the same events as JSONL")
    jsonl = os.path.join(work, "jsonl")
    timed([args.bin, "generate", "--reps", str(reps), "--days", str(args.days), "--start", start,
           "--out-dir", jsonl, "--pipeline", pipeline])
    jsonl_mb = sum(os.path.getsize(f) for f in glob.glob(os.path.join(jsonl, "*.jsonl"))) / 1e6
    duck_secs, duck_activities, duck_rows = duckdb_batch(jsonl, os.path.join(work, "duckdb-out"))

    once_rate = once_n / once_secs
    fresh = freshness(args, work, brokers, once_rate / 2)

    trigger_ms = int(re.match(r"(\d+)", args.trigger_interval).group(1)) * {"ms": 1, "s": 1000, "m": 60000}[
        re.match(r"\d+(ms|s|m)$", args.trigger_interval).group(1)]
    result = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)},
        "events": events, "reps": reps, "days": args.days,
        "limit": {"messages": limit_n, "mb": limit_mb, "seconds": limit_secs, "events_per_s": round(limit_n / limit_secs),
                  "cpu_s_per_million": round(limit_cpu / limit_n * 1e6, 2), "peak_rss_mib": round(limit_rss)},
        "once": {"messages": once_n, "mb": once_mb, "seconds": once_secs, "events_per_s": round(once_rate),
                 "cpu_s_per_million": round(once_cpu / once_n * 1e6, 2), "peak_rss_mib": round(once_rss)},
        "freshness": fresh,
        "duckdb": {"jsonl_mb": round(jsonl_mb, 1), "seconds": round(duck_secs, 2),
                   "events_per_s": round(events / duck_secs), "rep_daily_rows": duck_rows,
                   "same_rep_daily": duck_rows == qf_rows and duck_activities == qf_activities},
        "ratios": {"once_over_limit": round(once_rate / (limit_n / limit_secs), 3),
                   "duckdb_batch_over_snapshot": round(duck_secs * 1000 / max(1, fresh["snapshot_ms_p50"]), 1),
                   "once_over_duckdb_speed": round(duck_secs / once_secs, 3)},
        "targets": {
            "throughput_at_least_0.8_of_limit": once_rate >= 0.8 * limit_n / limit_secs,
            "freshness_p99_within_trigger_plus_1s": fresh["p99_ms"] <= trigger_ms + 1000,
            "once_faster_than_duckdb": once_secs < duck_secs,
            "snapshot_10x_faster_than_duckdb_batch": duck_secs * 1000 >= 10 * fresh["snapshot_ms_p50"],
        },
    }
    json.dump(result, open(args.json, "w"), indent=2)
    rows = [
        ("events (reps x days)", f"{events:,} ({reps} x {args.days})", ""),
        ("limit: no-op consumer", f"{result['limit']['events_per_s']:,} ev/s", f"{limit_secs:.2f} s, {limit_mb:.0f} MB, RSS {limit_rss:.0f} MiB"),
        ("quotaflow run --once", f"{result['once']['events_per_s']:,} ev/s", f"{once_secs:.2f} s, {result['once']['cpu_s_per_million']} CPU s/M, RSS {once_rss:.0f} MiB"),
        ("  / limit", f"{result['ratios']['once_over_limit']:.2f}", "target >= 0.80"),
        ("DuckDB batch (rep_daily + attainment)", f"{result['duckdb']['events_per_s']:,} ev/s", f"{duck_secs:.2f} s over {jsonl_mb:.0f} MB JSONL, same rep_daily: {result['duckdb']['same_rep_daily']}"),
        ("  DuckDB time / quotaflow time", f"{result['ratios']['once_over_duckdb_speed']:.2f}", "> 1: quotaflow's replay is faster"),
        ("freshness p50 / p99 / max", f"{fresh['p50_ms']} / {fresh['p99_ms']} / {fresh['max_ms']} ms",
         f"{fresh['events']:,} events at {fresh['rate_achieved']:,}/s, trigger {fresh['trigger_interval']}, "
         f"{fresh['snapshots_measured']} snapshots, RSS {fresh['peak_rss_mib']} MiB"
         + (f", after {fresh['history']['events']:,} events of {args.history_days} days' history (read in {fresh['history']['caught_up_s']} s)"
            if fresh["history"] else "")),
        ("snapshot time p50 / max (freshness run)", f"{fresh['snapshot_ms_p50']} / {fresh['snapshot_ms_max']} ms",
         "from the cut to `_latest`, every table and alert rule"),
        ("  DuckDB batch / snapshot p50", f"{result['ratios']['duckdb_batch_over_snapshot']}",
         "a refresh: DuckDB recomputing two tables from all the JSONL vs one incremental snapshot; goal >= 10"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'figure':<24}  detail")
    for name, fig, detail in rows:
        print(f"{name:<{width}}  {fig:<24}  {detail}")
    print(f"\ntargets: {json.dumps(result['targets'])}\nwritten to {args.json}")


if __name__ == "__main__":
    main()
