-- deals_by_period (helper view): deals_current by the fiscal period of their close_date,
-- rolled up to every level, shared by attainment, forecast, win_rates, activity_kpis and
-- leaderboard (its `rep` rows). The one place a deal meets the hierarchy: a deal rolls up by
-- its current owner's place on its close_date (rep_hierarchy), so the per-rep step groups by
-- the owner's hierarchy range too and joins rep_levels on the range's first day.
-- Grain (level, entity_id, period_type, period_start): every entity and period with a deal
-- closing in it, won, lost or open. Readers keep the rows they count (`won_count > 0`, ...).
-- A count is 0 and a sum NULL when no deal of the row counts toward it; unconverted amounts
-- are left out of sums.
WITH per_rep AS (
    -- rep × period first, then the roll-up to levels: thousands of rows instead of millions
    SELECT d.rep_id, h.valid_from AS on_day, t.period_type,
           fiscal_period_start(t.period_type, d.close_date) AS period_start,
           SUM(CASE WHEN d.is_won THEN 1 ELSE 0 END) AS won_count,
           SUM(CASE WHEN d.is_closed AND NOT d.is_won THEN 1 ELSE 0 END) AS lost_count,
           SUM(CASE WHEN d.is_closed THEN 0 ELSE 1 END) AS open_count,
           SUM(CASE WHEN d.is_won THEN d.amount_corporate END) AS closed_won,
           SUM(CASE WHEN d.is_won THEN days_between(day_of(d.created_at), d.close_date) END) AS won_cycle_days,
           SUM(CASE WHEN NOT d.is_closed AND d.forecast_category = 'commit' THEN d.amount_corporate END) AS commit_open,
           SUM(CASE WHEN NOT d.is_closed AND d.forecast_category = 'best_case' THEN d.amount_corporate END) AS best_case_open,
           SUM(CASE WHEN NOT d.is_closed AND d.forecast_category = 'pipeline' THEN d.amount_corporate END) AS pipeline_open,
           -- probabilities are exact to 6 decimals, so amount × probability stays decimal
           SUM(CASE WHEN NOT d.is_closed AND d.forecast_category <> 'omitted'
                    THEN d.amount_corporate * CAST(d.probability AS DECIMAL(10, 6)) END) AS weighted_open
    FROM deals_current d
    JOIN rep_hierarchy h ON h.rep_id = d.rep_id AND d.close_date BETWEEN h.valid_from AND h.valid_to
    CROSS JOIN period_types t
    GROUP BY d.rep_id, h.valid_from, t.period_type, fiscal_period_start(t.period_type, d.close_date)
)
SELECT l.level, l.entity_id, p.period_type, p.period_start,
       SUM(p.won_count) AS won_count,
       SUM(p.lost_count) AS lost_count,
       SUM(p.open_count) AS open_count,
       SUM(p.closed_won) AS closed_won,
       SUM(p.won_cycle_days) AS won_cycle_days,
       SUM(p.commit_open) AS commit_open,
       SUM(p.best_case_open) AS best_case_open,
       SUM(p.pipeline_open) AS pipeline_open,
       SUM(p.weighted_open) AS weighted_open
FROM per_rep p
JOIN rep_levels l ON l.rep_id = p.rep_id AND p.on_day BETWEEN l.valid_from AND l.valid_to
GROUP BY l.level, l.entity_id, p.period_type, p.period_start
