-- win_rates — grain (level, entity_id, period_type, period_start).
-- Rows: every period with at least one closed deal (won or lost, by close_date).
WITH closed AS (
    SELECT l.level, l.entity_id, t.period_type,
           fiscal_period_start(t.period_type, d.close_date) AS period_start,
           d.is_won, d.amount_corporate,
           days_between(day_of(d.created_at), d.close_date) AS cycle_days
    FROM deals_current d
    CROSS JOIN period_types t
    JOIN rep_levels l ON l.rep_id = d.rep_id
    WHERE d.is_closed
),
open_now AS (
    SELECT l.level, l.entity_id, COUNT(*) AS open_deals
    FROM deals_current d
    JOIN rep_levels l ON l.rep_id = d.rep_id
    WHERE NOT d.is_closed
    GROUP BY l.level, l.entity_id
),
agg AS (
    SELECT level, entity_id, period_type, period_start,
           SUM(CASE WHEN is_won THEN 1 ELSE 0 END) AS won_count,
           SUM(CASE WHEN is_won THEN 0 ELSE 1 END) AS lost_count,
           money(COALESCE(SUM(CASE WHEN is_won THEN amount_corporate END), 0)) AS won_amount,
           SUM(CASE WHEN is_won THEN cycle_days END) AS won_cycle_days
    FROM closed
    GROUP BY level, entity_id, period_type, period_start
),
figures AS (
    SELECT a.*,
           COALESCE(o.open_deals, 0) AS open_deals,
           money(prorate(a.won_amount, 1, NULLIF(a.won_count, 0))) AS avg_deal_size
    FROM agg a
    LEFT JOIN open_now o ON o.level = a.level AND o.entity_id = a.entity_id
)
SELECT level, entity_id, period_type, period_start,
       won_count,
       lost_count,
       CAST(won_count AS DOUBLE) / CAST(won_count + lost_count AS DOUBLE) AS win_rate,
       won_amount,
       avg_deal_size,
       CAST(won_cycle_days AS DOUBLE) / CAST(NULLIF(won_count, 0) AS DOUBLE) AS avg_cycle_days,
       open_deals,
       -- open × avg_deal_size × win_rate / avg_cycle_days
       --   = avg_deal_size × open × won² / ((won + lost) × Σ cycle days), exact, rounded once
       CASE WHEN open_deals = 0 THEN money(0)
            ELSE money(prorate(avg_deal_size, open_deals * won_count * won_count,
                               (won_count + lost_count) * won_cycle_days)) END AS pipeline_velocity
FROM figures
ORDER BY level, entity_id, period_type, period_start
