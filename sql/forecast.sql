-- forecast — grain (level, entity_id, period_type, period_start).
-- Rows: every period with a quota record or any deal closing in it, future periods included.
-- Open amounts by forecast category exclude `omitted`; unconverted amounts are left out of sums.
WITH keys AS (
    SELECT level, entity_id, period_type, period_start FROM quota_totals
    UNION
    SELECT level, entity_id, period_type, period_start FROM deals_by_period
),
base AS (
    SELECT k.level, k.entity_id, k.period_type, k.period_start, c.period_end,
           c.period_days, c.elapsed_days,
           q.quota,
           money(COALESCE(s.closed_won, 0)) AS closed_won,
           money(COALESCE(s.commit_open, 0)) AS commit_open,
           money(COALESCE(s.best_case_open, 0)) AS best_case_open,
           money(COALESCE(s.pipeline_open, 0)) AS pipeline_open,
           money(COALESCE(s.weighted_open, 0)) AS weighted_pipeline
    FROM keys k
    JOIN calendar c ON c.period_type = k.period_type AND c.period_start = k.period_start
    LEFT JOIN quota_totals q ON q.level = k.level AND q.entity_id = k.entity_id
                            AND q.period_type = k.period_type AND q.period_start = k.period_start
    LEFT JOIN deals_by_period s ON s.level = k.level AND s.entity_id = k.entity_id
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
