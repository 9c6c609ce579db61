-- leaderboard — grain (period_type, period_start, rep_id): gamification points over the
-- period with the pipeline's weights ([leaderboard] in the pipeline file), for reps with at
-- least one activity or won deal in it. A held demo earns the meetings_held weight and the
-- demos_held weight on top.
WITH act AS (
    SELECT * FROM rep_periods
),
won AS (
    SELECT period_type, period_start, entity_id AS rep_id,
           won_count AS won_deals, closed_won AS won_amount
    FROM deals_by_period
    WHERE level = 'rep' AND won_count > 0
),
keys AS (
    SELECT period_type, period_start, rep_id FROM act
    UNION
    SELECT period_type, period_start, rep_id FROM won
),
counts AS (
    SELECT k.period_type, k.period_start, k.rep_id,
           COALESCE(a.calls, 0) AS calls, COALESCE(a.emails, 0) AS emails,
           COALESCE(a.meetings_held, 0) AS meetings_held, COALESCE(a.demos_held, 0) AS demos_held,
           COALESCE(a.webinars, 0) AS webinars, COALESCE(a.tasks, 0) AS tasks,
           COALESCE(w.won_deals, 0) AS won_deals, money(COALESCE(w.won_amount, 0)) AS won_amount
    FROM keys k
    LEFT JOIN act a ON a.period_type = k.period_type AND a.period_start = k.period_start AND a.rep_id = k.rep_id
    LEFT JOIN won w ON w.period_type = k.period_type AND w.period_start = k.period_start AND w.rep_id = k.rep_id
),
scored AS (
    SELECT c.*,
           c.calls * p.calls + c.emails * p.emails + c.meetings_held * p.meetings_held
             + c.demos_held * p.demos_held + c.webinars * p.webinars + c.tasks * p.tasks
             + c.won_deals * p.won_deals + CAST(c.won_amount AS DOUBLE) / 1000.0 * p.per_1000_won AS points
    FROM counts c
    CROSS JOIN leaderboard_weights p
)
SELECT period_type, period_start, rep_id, points,
       CAST(RANK() OVER (PARTITION BY period_type, period_start ORDER BY points DESC) AS BIGINT) AS "rank",
       calls, emails, meetings_held, demos_held, webinars, tasks, won_deals, won_amount
FROM scored
ORDER BY period_type, period_start, "rank", rep_id
