-- trends — grain (rep_id, week_start): every ISO week from the week of the rep's first
-- activity or deal event to the week of as_of_date (empty weeks are zeros), with
-- week-over-week change, 4-week moving average and 8-week least-squares slope
-- (x = 0, 1, ...; slope = (n Σxy − Σx Σy) / (n Σx² − (Σx)²), exact for money).
-- Weekly activity comes from `activity_weeks`, which the state keeps summed per rep and week.
WITH first_week AS (
    SELECT rep_id, MIN(week_start) AS first_week
    FROM (
        SELECT rep_id, week_start FROM activity_weeks
        UNION ALL
        SELECT rep_id, week_start(day_of(first_deal_at)) AS week_start FROM rep_first_deal
    ) AS firsts
    GROUP BY rep_id
),
grid AS (
    SELECT f.rep_id, w.week_start
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
           ROW_NUMBER() OVER (PARTITION BY g.rep_id ORDER BY g.week_start) - 1 AS x
    FROM grid g
    LEFT JOIN act a ON a.rep_id = g.rep_id AND a.week_start = g.week_start
    LEFT JOIN won w ON w.rep_id = g.rep_id AND w.week_start = g.week_start
),
windowed AS (
    SELECT *,
           LAG(activities) OVER (PARTITION BY rep_id ORDER BY week_start) AS prev_activities,
           LAG(won_amount) OVER (PARTITION BY rep_id ORDER BY week_start) AS prev_won,
           AVG(CAST(activities AS DOUBLE)) OVER w4 AS activities_ma4,
           SUM(won_amount) OVER w4 AS won4,
           COUNT(*) OVER w4 AS n4,
           COUNT(*) OVER w8 AS n8,
           SUM(x) OVER w8 AS sx,
           SUM(x * x) OVER w8 AS sxx,
           SUM(activities) OVER w8 AS sa,
           SUM(x * activities) OVER w8 AS sxa,
           SUM(won_amount) OVER w8 AS sw,
           SUM(won_amount * x) OVER w8 AS sxw
    FROM series
    WINDOW w4 AS (PARTITION BY rep_id ORDER BY week_start ROWS BETWEEN 3 PRECEDING AND CURRENT ROW),
           w8 AS (PARTITION BY rep_id ORDER BY week_start ROWS BETWEEN 7 PRECEDING AND CURRENT ROW)
),
figures AS (
    SELECT *,
           CASE WHEN n8 * sxx - sx * sx <> 0
                THEN CAST(n8 * sxa - sx * sa AS DOUBLE) / CAST(n8 * sxx - sx * sx AS DOUBLE) END AS activities_slope8
    FROM windowed
)
SELECT rep_id, week_start, activities, meetings_held, won_amount,
       CASE WHEN prev_activities <> 0
            THEN CAST(activities - prev_activities AS DOUBLE) / CAST(prev_activities AS DOUBLE) END AS activities_wow,
       activities_ma4,
       activities_slope8,
       CASE WHEN prev_won <> 0
            THEN CAST(won_amount - prev_won AS DOUBLE) / CAST(prev_won AS DOUBLE) END AS won_amount_wow,
       money(prorate(won4, 1, n4)) AS won_amount_ma4,
       money(prorate(n8 * sxw - sx * sw, 1, n8 * sxx - sx * sx)) AS won_amount_slope8,
       CASE WHEN activities_slope8 > 0.05 * activities_ma4 THEN 'up'
            WHEN activities_slope8 < -0.05 * activities_ma4 THEN 'down'
            ELSE 'flat' END AS activity_trend
FROM figures
