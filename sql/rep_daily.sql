-- rep_daily — grain (rep_id, day): activity counters, each event_id counted once.
-- The state already folds activities into this grain; the table publishes it (unsorted:
-- sorting millions of rows costs more than every other table together).
-- month_start (the fiscal month of `day`) is the partition column.
SELECT rep_id, day, calls, emails, meetings, webinars, demos, tasks, activities,
       call_seconds, connected_calls, replied_emails, meetings_held,
       fiscal_period_start('month', day) AS month_start
FROM activity_days
