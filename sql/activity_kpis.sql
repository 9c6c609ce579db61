-- activity_kpis — grain (level, entity_id, period_type, period_start).
-- Rows: every period with at least one activity. Sums of rep_daily over the period, each
-- activity rolled up by the hierarchy of its own day (activity_parts holds the sums per rep
-- and part of the period in one team; here they roll up to the levels).
WITH act AS (
    SELECT l.level, l.entity_id, p.period_type, p.period_start,
           SUM(p.calls) AS calls, SUM(p.emails) AS emails, SUM(p.meetings) AS meetings,
           SUM(p.webinars) AS webinars, SUM(p.demos) AS demos, SUM(p.tasks) AS tasks,
           SUM(p.activities) AS activities, SUM(p.call_seconds) AS call_seconds,
           SUM(p.connected_calls) AS connected_calls, SUM(p.replied_emails) AS replied_emails,
           SUM(p.meetings_held) AS meetings_held
    FROM activity_parts p
    JOIN rep_levels l ON l.rep_id = p.rep_id AND p.on_day BETWEEN l.valid_from AND l.valid_to
    GROUP BY l.level, l.entity_id, p.period_type, p.period_start
),
won AS (
    SELECT level, entity_id, period_type, period_start, won_count
    FROM deals_by_period
    WHERE won_count > 0
)
SELECT a.level, a.entity_id, a.period_type, a.period_start,
       a.calls, a.emails, a.meetings, a.webinars, a.demos, a.tasks, a.activities,
       a.call_seconds, a.connected_calls, a.replied_emails, a.meetings_held,
       ratio(a.connected_calls, a.calls) AS connect_rate,
       ratio(a.replied_emails, a.emails) AS reply_rate,
       ratio(a.activities, c.elapsed_days) AS activities_per_day,
       COALESCE(w.won_count, 0) AS won_count,
       ratio(a.activities, w.won_count) AS activities_per_win
FROM act a
JOIN calendar c ON c.period_type = a.period_type AND c.period_start = a.period_start
LEFT JOIN won w ON w.level = a.level AND w.entity_id = a.entity_id
               AND w.period_type = a.period_type AND w.period_start = a.period_start
ORDER BY a.level, a.entity_id, a.period_type, a.period_start
