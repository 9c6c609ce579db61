-- win_rates — grain (level, entity_id, period_type, period_start).
-- Rows: every period with at least one closed deal (won or lost, by close_date).
-- open_deals: the entity's open deals whose close_date falls in the period.
WITH agg AS (
    SELECT level, entity_id, period_type, period_start, won_count, lost_count,
           open_count AS open_deals,
           money(COALESCE(closed_won, 0)) AS won_amount, won_cycle_days
    FROM deals_by_period
    WHERE won_count + lost_count > 0
),
figures AS (
    SELECT a.*,
           money(prorate(a.won_amount, 1, a.won_count)) AS avg_deal_size
    FROM agg a
)
SELECT level, entity_id, period_type, period_start,
       won_count,
       lost_count,
       ratio(won_count, won_count + lost_count) AS win_rate,
       won_amount,
       avg_deal_size,
       ratio(won_cycle_days, won_count) AS avg_cycle_days,
       open_deals,
       -- open × avg_deal_size × win_rate / avg_cycle_days
       --   = avg_deal_size × open × won² / ((won + lost) × Σ cycle days), exact, rounded once
       CASE WHEN open_deals = 0 THEN money(0)
            ELSE money(prorate(avg_deal_size, open_deals * won_count * won_count,
                               (won_count + lost_count) * won_cycle_days)) END AS pipeline_velocity
FROM figures
ORDER BY level, entity_id, period_type, period_start
