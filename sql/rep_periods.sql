-- rep_periods (helper view): activity counters per rep and fiscal period, summed once from the
-- daily grain and shared by activity_kpis and leaderboard.
SELECT a.rep_id, t.period_type, fiscal_period_start(t.period_type, a.day) AS period_start,
       SUM(a.calls) AS calls, SUM(a.emails) AS emails, SUM(a.meetings) AS meetings,
       SUM(a.webinars) AS webinars, SUM(a.demos) AS demos, SUM(a.tasks) AS tasks,
       SUM(a.activities) AS activities, SUM(a.call_seconds) AS call_seconds,
       SUM(a.connected_calls) AS connected_calls, SUM(a.replied_emails) AS replied_emails,
       SUM(a.meetings_held) AS meetings_held, SUM(a.demos_held) AS demos_held
FROM activity_days a
CROSS JOIN period_types t
GROUP BY a.rep_id, t.period_type, fiscal_period_start(t.period_type, a.day)
