-- win_rates — grain (level, entity_id, period_type, period_start).
-- Rows: every period with at least one closed deal (won or lost, by close_date).
WITH per_rep AS (
    -- rep × period first, then the roll-up to levels
    SELECT d.rep_id, t.period_type, fiscal_period_start(t.period_type, d.close_date) AS period_start,
           SUM(CASE WHEN d.is_won THEN 1 ELSE 0 END) AS won_count,
           SUM(CASE WHEN d.is_won THEN 0 ELSE 1 END) AS lost_count,
           SUM(CASE WHEN d.is_won THEN d.amount_corporate END) AS won_amount,
           SUM(CASE WHEN d.is_won THEN days_between(day_of(d.created_at), d.close_date) END) AS won_cycle_days
    FROM deals_current d
    CROSS JOIN period_types t
    WHERE d.is_closed
    GROUP BY d.rep_id, t.period_type, fiscal_period_start(t.period_type, d.close_date)
),
open_now AS (
    SELECT l.level, l.entity_id, SUM(o.open_deals) AS open_deals
    FROM (SELECT rep_id, COUNT(*) AS open_deals FROM deals_current WHERE NOT is_closed GROUP BY rep_id) o
    JOIN rep_levels l ON l.rep_id = o.rep_id
    GROUP BY l.level, l.entity_id
),
agg AS (
    SELECT l.level, l.entity_id, p.period_type, p.period_start,
           SUM(p.won_count) AS won_count,
           SUM(p.lost_count) AS lost_count,
           money(COALESCE(SUM(p.won_amount), 0)) AS won_amount,
           SUM(p.won_cycle_days) AS won_cycle_days
    FROM per_rep p
    JOIN rep_levels l ON l.rep_id = p.rep_id
    GROUP BY l.level, l.entity_id, p.period_type, p.period_start
),
figures AS (
    SELECT a.*,
           COALESCE(o.open_deals, 0) AS open_deals,
           money(prorate(a.won_amount, 1, a.won_count)) AS avg_deal_size
    FROM agg a
    LEFT JOIN open_now o ON o.level = a.level AND o.entity_id = a.entity_id
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
