-- rep_inactive: an active rep (or one missing from the roster) with no activity in the last
-- ${days} days of the event clock.
WITH last_activity AS (
    SELECT rep_id, last_day FROM rep_activity
)
SELECT r.rep_id AS key,
       CAST(days_between(a.last_day, c.as_of_date) AS DOUBLE) AS value,
       CASE WHEN a.last_day IS NULL THEN 'no activity yet'
            ELSE 'no activity since ' || CAST(a.last_day AS VARCHAR) END AS message
FROM reps r
LEFT JOIN roster ro ON ro.rep_id = r.rep_id
LEFT JOIN last_activity a ON a.rep_id = r.rep_id
CROSS JOIN clock c
WHERE COALESCE(ro.active, true)
  AND (a.last_day IS NULL OR days_between(a.last_day, c.as_of_date) >= ${days})
