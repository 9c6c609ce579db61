-- attainment — grain (level, entity_id, period_type, period_start).
-- Rows: every period with a quota record or a closed-won deal, period_start <= as_of_date.
WITH quota AS (
    SELECT * FROM quota_totals
),
won AS (
    SELECT level, entity_id, period_type, period_start, closed_won
    FROM deals_by_period
    WHERE won_count > 0
),
keys AS (
    SELECT level, entity_id, period_type, period_start FROM quota
    UNION
    SELECT level, entity_id, period_type, period_start FROM won
),
base AS (
    SELECT k.level, k.entity_id, k.period_type, k.period_start, c.period_end, c.is_current,
           c.elapsed_days, c.remaining_days, c.time_elapsed, c.period_days,
           q.quota,
           money(COALESCE(w.closed_won, 0)) AS closed_won
    FROM keys k
    JOIN calendar c ON c.period_type = k.period_type AND c.period_start = k.period_start
    CROSS JOIN clock
    LEFT JOIN quota q ON q.level = k.level AND q.entity_id = k.entity_id
                     AND q.period_type = k.period_type AND q.period_start = k.period_start
    LEFT JOIN won w ON w.level = k.level AND w.entity_id = k.entity_id
                   AND w.period_type = k.period_type AND w.period_start = k.period_start
    WHERE k.period_start <= clock.as_of_date
),
figures AS (
    SELECT *,
           ratio(closed_won, quota) AS attainment,
           money(prorate(closed_won, period_days, elapsed_days)) AS run_rate_projection
    FROM base
)
SELECT level, entity_id, period_type, period_start, period_end, is_current,
       elapsed_days, remaining_days, time_elapsed,
       quota,
       closed_won,
       attainment,
       money(prorate(quota, elapsed_days, period_days)) AS expected_to_date,
       CASE WHEN time_elapsed > 0 THEN attainment / time_elapsed END AS pacing,
       run_rate_projection,
       ratio(run_rate_projection, quota) AS projected_attainment,
       money(quota - closed_won) AS gap_to_quota,
       money(prorate(GREATEST(quota - closed_won, 0), 1, remaining_days)) AS required_per_day,
       -- bands from exact decimals, not from the DOUBLE ratio: 120 % exactly is above_120
       CASE WHEN quota IS NULL OR quota = 0 THEN NULL
            WHEN closed_won * 10 >= quota * 12 THEN 'above_120'
            WHEN closed_won >= quota THEN '100_120'
            WHEN closed_won * 10 >= quota * 8 THEN '80_99'
            WHEN closed_won * 2 >= quota THEN '50_79'
            ELSE 'below_50' END AS attainment_band
FROM figures
ORDER BY level, entity_id, period_type, period_start
