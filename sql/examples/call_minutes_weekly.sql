-- call_minutes_weekly — an example of a custom metric: talk time per rep and ISO week, and the
-- share of calls that connected. Add it to a pipeline with:
--
--   [[tables]]
--   name = "call_minutes_weekly"
--   sql = "../sql/examples/call_minutes_weekly.sql"
--
-- It reads `rep_daily` (computed earlier in the pipeline) and the functions `week_start()` and
-- `ratio()` (NULL when a week has no calls); every snapshot then holds the table, as the Delta
-- table tables/call_minutes_weekly/ (add `partition_by = "week_start"` to the entry to give
-- each week its own files).
SELECT rep_id,
       week_start(day) AS week_start,
       SUM(calls) AS calls,
       CAST(SUM(call_seconds) AS DOUBLE) / 60.0 AS call_minutes,
       ratio(SUM(connected_calls), SUM(calls)) AS connect_rate
FROM rep_daily
GROUP BY rep_id, week_start(day)
ORDER BY rep_id, week_start
