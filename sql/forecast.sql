-- forecast — grain (level, entity_id, period_type, period_start).
-- Rows: every period with a quota record or any deal closing in it, future periods included.
-- Open amounts by forecast category exclude `omitted`; unconverted amounts are left out of sums.
WITH per_rep AS (
    -- rep × period first, then the roll-up to levels: thousands of rows instead of millions
    SELECT dc.rep_id, t.period_type,
           fiscal_period_start(t.period_type, dc.close_date) AS period_start,
           SUM(CASE WHEN dc.is_won THEN dc.amount_corporate END) AS closed_won,
           SUM(CASE WHEN NOT dc.is_closed AND dc.forecast_category = 'commit' THEN dc.amount_corporate END) AS commit_open,
           SUM(CASE WHEN NOT dc.is_closed AND dc.forecast_category = 'best_case' THEN dc.amount_corporate END) AS best_case_open,
           SUM(CASE WHEN NOT dc.is_closed AND dc.forecast_category = 'pipeline' THEN dc.amount_corporate END) AS pipeline_open,
           -- probabilities are exact to 6 decimals, so amount × probability stays decimal
           SUM(CASE WHEN NOT dc.is_closed AND dc.forecast_category <> 'omitted'
                    THEN dc.amount_corporate * CAST(dc.probability AS DECIMAL(10, 6)) END) AS weighted
    FROM deals_current dc
    CROSS JOIN period_types t
    GROUP BY dc.rep_id, t.period_type, fiscal_period_start(t.period_type, dc.close_date)
),
sums AS (
    SELECT l.level, l.entity_id, p.period_type, p.period_start,
           SUM(p.closed_won) AS closed_won, SUM(p.commit_open) AS commit_open,
           SUM(p.best_case_open) AS best_case_open, SUM(p.pipeline_open) AS pipeline_open,
           SUM(p.weighted) AS weighted
    FROM per_rep p
    JOIN rep_levels l ON l.rep_id = p.rep_id
    GROUP BY l.level, l.entity_id, p.period_type, p.period_start
),
keys AS (
    SELECT level, entity_id, period_type, period_start FROM quota_totals
    UNION
    SELECT level, entity_id, period_type, period_start FROM sums
),
base AS (
    SELECT k.level, k.entity_id, k.period_type, k.period_start, c.period_end,
           c.period_days, c.elapsed_days,
           q.quota,
           money(COALESCE(s.closed_won, 0)) AS closed_won,
           money(COALESCE(s.commit_open, 0)) AS commit_open,
           money(COALESCE(s.best_case_open, 0)) AS best_case_open,
           money(COALESCE(s.pipeline_open, 0)) AS pipeline_open,
           money(COALESCE(s.weighted, 0)) AS weighted_pipeline
    FROM keys k
    JOIN calendar c ON c.period_type = k.period_type AND c.period_start = k.period_start
    LEFT JOIN quota_totals q ON q.level = k.level AND q.entity_id = k.entity_id
                            AND q.period_type = k.period_type AND q.period_start = k.period_start
    LEFT JOIN sums s ON s.level = k.level AND s.entity_id = k.entity_id
                    AND s.period_type = k.period_type AND s.period_start = k.period_start
),
figures AS (
    SELECT *,
           money(closed_won + commit_open) AS commit_forecast,
           money(commit_open + best_case_open + pipeline_open) AS open_pipeline,
           money(closed_won + weighted_pipeline) AS weighted_forecast
    FROM base
)
SELECT level, entity_id, period_type, period_start, period_end,
       closed_won,
       commit_open AS "commit",
       best_case_open AS best_case,
       pipeline_open AS pipeline,
       commit_forecast,
       money(commit_forecast + best_case_open) AS best_case_forecast,
       open_pipeline,
       weighted_pipeline,
       weighted_forecast,
       quota,
       -- no coverage once quota is reached (ratio alone would give one for a negative remainder)
       CASE WHEN quota - closed_won > 0 THEN ratio(open_pipeline, quota - closed_won) END AS coverage,
       money(prorate(closed_won, period_days, elapsed_days)) AS run_rate_forecast,
       ratio(commit_forecast, quota) AS commit_vs_quota,
       ratio(weighted_forecast, quota) AS weighted_vs_quota
FROM figures
ORDER BY level, entity_id, period_type, period_start
