-- activity_parts (helper view): activity counters per rep, fiscal period and part of the
-- period in which the rep held one place in the hierarchy, so activities roll up by their own
-- day (activity_kpis). Where the rep's place does not change inside the period (nearly
-- always), the part is the whole period and its counters are those of activity_periods (kept
-- up to date by the state); where one of the rep's hierarchy ranges starts inside the period,
-- the parts are summed from activity_days. on_day is the part's first day in the period: the
-- day to join rep_levels on.
WITH split AS (
    -- (rep, period) pairs with a hierarchy range starting after the period's first day
    SELECT DISTINCT h.rep_id, c.period_type, c.period_start, c.period_end
    FROM rep_hierarchy h
    JOIN calendar c ON h.valid_from > c.period_start AND h.valid_from <= c.period_end
),
whole AS (
    SELECT a.rep_id, a.period_type, a.period_start, a.period_start AS on_day,
           a.calls, a.emails, a.meetings, a.webinars, a.demos, a.tasks, a.activities,
           a.call_seconds, a.connected_calls, a.replied_emails, a.meetings_held
    FROM activity_periods a
    LEFT JOIN split s ON s.rep_id = a.rep_id AND s.period_type = a.period_type
                     AND s.period_start = a.period_start
    WHERE s.rep_id IS NULL
),
parts AS (
    SELECT s.rep_id, s.period_type, s.period_start,
           GREATEST(h.valid_from, s.period_start) AS on_day,
           SUM(d.calls) AS calls, SUM(d.emails) AS emails, SUM(d.meetings) AS meetings,
           SUM(d.webinars) AS webinars, SUM(d.demos) AS demos, SUM(d.tasks) AS tasks,
           SUM(d.activities) AS activities, SUM(d.call_seconds) AS call_seconds,
           SUM(d.connected_calls) AS connected_calls, SUM(d.replied_emails) AS replied_emails,
           SUM(d.meetings_held) AS meetings_held
    FROM split s
    JOIN rep_hierarchy h ON h.rep_id = s.rep_id
                        AND h.valid_from <= s.period_end AND h.valid_to >= s.period_start
    JOIN activity_days d ON d.rep_id = s.rep_id
                        AND d.day BETWEEN GREATEST(h.valid_from, s.period_start)
                                      AND LEAST(h.valid_to, s.period_end)
    GROUP BY s.rep_id, s.period_type, s.period_start, GREATEST(h.valid_from, s.period_start)
)
SELECT * FROM whole
UNION ALL
SELECT * FROM parts
