-- team_calls_weekly — an example of a custom metric that rolls up by the effective-dated
-- hierarchy: calls and talk minutes per team and ISO week, each day's calls counting for the
-- team the rep sat in on that day (a rep who moves mid-week splits the week between the two
-- teams). Add it to a pipeline with:
--
--   [[tables]]
--   name = "team_calls_weekly"
--   sql = "../sql/examples/team_calls_weekly.sql"
--
-- rep_hierarchy has one row per rep and validity range (valid_from..valid_to, inclusive,
-- covering every day), so the join finds exactly one team for every rep-day.
SELECT h.team_id,
       week_start(d.day) AS week_start,
       SUM(d.calls) AS calls,
       CAST(SUM(d.call_seconds) AS DOUBLE) / 60.0 AS call_minutes
FROM rep_daily d
JOIN rep_hierarchy h ON h.rep_id = d.rep_id AND d.day BETWEEN h.valid_from AND h.valid_to
GROUP BY h.team_id, week_start(d.day)
ORDER BY h.team_id, week_start
