-- rep_daily — grain (rep_id, day): activity counters, each event_id counted once.
-- The state already folds activities into this grain; the table publishes it (unsorted:
-- sorting millions of rows costs more than every other table together).
SELECT rep_id, day, calls, emails, meetings, webinars, demos, tasks, activities,
       call_seconds, connected_calls, replied_emails, meetings_held
FROM activity_days
