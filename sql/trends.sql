-- trends — grain (rep_id, week_start): every ISO week from the week of the rep's first
-- activity or deal event to the week of as_of_date (empty weeks are zeros), with
-- week-over-week change, 4-week moving average and 8-week least-squares slope
-- (x = 0, 1, ...; slope = (n Σxy − Σx Σy) / (n Σx² − (Σx)²), exact for money).
-- Weekly activity comes from `activity_weeks`, which the state keeps summed per rep and week.
WITH first_week AS (
    SELECT rep_id, MIN(week_start) AS first_week
    FROM (
        SELECT rep_id, week_start(first_day) AS week_start FROM rep_activity
        UNION ALL
        SELECT rep_id, week_start(day_of(first_deal_at)) AS week_start FROM rep_first_deal
    ) AS firsts
    GROUP BY rep_id
),
grid AS (
    SELECT f.rep_id, f.first_week, w.week_start
    FROM first_week f
    JOIN weeks w ON w.week_start >= f.first_week
),
act AS (
    SELECT rep_id, week_start, activities, meetings_held FROM activity_weeks
),
won AS (
    SELECT rep_id, week_start(close_date) AS week_start, SUM(amount_corporate) AS won_amount
    FROM deals_current
    WHERE is_won
    GROUP BY rep_id, week_start(close_date)
),
series AS (
    SELECT g.rep_id, g.week_start,
           COALESCE(a.activities, 0) AS activities,
           COALESCE(a.meetings_held, 0) AS meetings_held,
           money(COALESCE(w.won_amount, 0)) AS won_amount,
           -- the week's index in the rep's series (the grid has every week from the first)
           CAST(days_between(g.first_week, g.week_start) / 7 AS BIGINT) AS x
    FROM grid g
    LEFT JOIN act a ON a.rep_id = g.rep_id AND a.week_start = g.week_start
    LEFT JOIN won w ON w.rep_id = g.rep_id AND w.week_start = g.week_start
),
-- The windows come from the previous seven weeks as LAGs (one sort, shifted columns) rather
-- than sliding aggregates: with x the week's index, over the last n8 = min(x + 1, 8) weeks
-- Σx and Σx² have closed forms and Σ x·y = x·Σy − Σ i·y(x − i).
lagged AS (
    SELECT *,
           LAG(activities, 1) OVER w AS a1,
           LAG(activities, 2) OVER w AS a2,
           LAG(activities, 3) OVER w AS a3,
           LAG(activities, 4) OVER w AS a4,
           LAG(activities, 5) OVER w AS a5,
           LAG(activities, 6) OVER w AS a6,
           LAG(activities, 7) OVER w AS a7,
           LAG(won_amount, 1) OVER w AS w1,
           LAG(won_amount, 2) OVER w AS w2,
           LAG(won_amount, 3) OVER w AS w3,
           LAG(won_amount, 4) OVER w AS w4,
           LAG(won_amount, 5) OVER w AS w5,
           LAG(won_amount, 6) OVER w AS w6,
           LAG(won_amount, 7) OVER w AS w7
    FROM series
    WINDOW w AS (PARTITION BY rep_id ORDER BY week_start)
),
sums AS (
    SELECT rep_id, week_start, activities, meetings_held, won_amount, x,
           a1 AS prev_activities, w1 AS prev_won,
           CAST(LEAST(x + 1, 4) AS BIGINT) AS n4, CAST(LEAST(x + 1, 8) AS BIGINT) AS n8,
           activities + COALESCE(a1, 0) + COALESCE(a2, 0) + COALESCE(a3, 0) AS sa4,
           won_amount + COALESCE(w1, 0) + COALESCE(w2, 0) + COALESCE(w3, 0) AS won4,
           activities + COALESCE(a1, 0) + COALESCE(a2, 0) + COALESCE(a3, 0) + COALESCE(a4, 0) + COALESCE(a5, 0) + COALESCE(a6, 0) + COALESCE(a7, 0) AS sa,
           won_amount + COALESCE(w1, 0) + COALESCE(w2, 0) + COALESCE(w3, 0) + COALESCE(w4, 0) + COALESCE(w5, 0) + COALESCE(w6, 0) + COALESCE(w7, 0) AS sw,
           COALESCE(a1, 0) + 2 * COALESCE(a2, 0) + 3 * COALESCE(a3, 0) + 4 * COALESCE(a4, 0) + 5 * COALESCE(a5, 0) + 6 * COALESCE(a6, 0) + 7 * COALESCE(a7, 0) AS ia,
           COALESCE(w1, 0) + 2 * COALESCE(w2, 0) + 3 * COALESCE(w3, 0) + 4 * COALESCE(w4, 0) + 5 * COALESCE(w5, 0) + 6 * COALESCE(w6, 0) + 7 * COALESCE(w7, 0) AS iw
    FROM lagged
),
windowed AS (
    SELECT *,
           ratio(sa4, n4) AS activities_ma4,
           n8 * x - n8 * (n8 - 1) / 2 AS sx,
           n8 * x * x - x * n8 * (n8 - 1) + (n8 - 1) * n8 * (2 * n8 - 1) / 6 AS sxx,
           x * sa - ia AS sxa,
           x * sw - iw AS sxw
    FROM sums
),
figures AS (
    SELECT *,
           ratio(n8 * sxa - sx * sa, n8 * sxx - sx * sx) AS activities_slope8
    FROM windowed
)
SELECT rep_id, week_start, activities, meetings_held, won_amount,
       ratio(activities - prev_activities, prev_activities) AS activities_wow,
       activities_ma4,
       activities_slope8,
       ratio(won_amount - prev_won, prev_won) AS won_amount_wow,
       money(prorate(won4, 1, n4)) AS won_amount_ma4,
       money(prorate(n8 * sxw - sx * sw, 1, n8 * sxx - sx * sx)) AS won_amount_slope8,
       CASE WHEN activities_slope8 > 0.05 * activities_ma4 THEN 'up'
            WHEN activities_slope8 < -0.05 * activities_ma4 THEN 'down'
            ELSE 'flat' END AS activity_trend
FROM figures
