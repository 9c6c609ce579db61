-- call_minutes_weekly — an example of a custom metric: talk time per rep and ISO week, and the
-- share of calls that connected. Add it to a pipeline with:
--
--   [[tables]]
--   name = "call_minutes_weekly"
--   sql = "../sql/examples/call_minutes_weekly.sql"
--
-- It reads `rep_daily` (computed earlier in the pipeline) and the `week_start()` function;
-- every snapshot then holds the table, with snapshot_id and as_of added.
SELECT rep_id,
       week_start(day) AS week_start,
       SUM(calls) AS calls,
       CAST(SUM(call_seconds) AS DOUBLE) / 60.0 AS call_minutes,
       CAST(SUM(connected_calls) AS DOUBLE) / CAST(NULLIF(SUM(calls), 0) AS DOUBLE) AS connect_rate
FROM rep_daily
GROUP BY rep_id, week_start(day)
ORDER BY rep_id, week_start
