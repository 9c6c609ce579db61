-- rep_periods (helper view): activity counters per rep and fiscal period, shared by
-- activity_kpis and leaderboard. The state keeps these sums up to date as activities arrive
-- (`activity_periods`), so a snapshot does not sum the whole rep × day history again.
SELECT rep_id, period_type, period_start, calls, emails, meetings, webinars, demos, tasks,
       activities, call_seconds, connected_calls, replied_emails, meetings_held, demos_held
FROM activity_periods
