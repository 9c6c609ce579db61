-- performance — grain (period_type, period_start, rep_id): reps with a non-NULL attainment,
-- ranked within the company and their team.
WITH r AS (
    SELECT a.period_type, a.period_start, a.entity_id AS rep_id, a.attainment, p.team_id, p.region
    FROM attainment a
    JOIN reps p ON p.rep_id = a.entity_id
    WHERE a.level = 'rep' AND a.attainment IS NOT NULL
),
stats AS (
    SELECT period_type, period_start, AVG(attainment) AS mean, STDDEV_POP(attainment) AS sd
    FROM r
    GROUP BY period_type, period_start
),
ranked AS (
    SELECT r.*,
           CAST(RANK() OVER (PARTITION BY r.period_type, r.period_start ORDER BY r.attainment DESC) AS BIGINT) AS company_rank,
           CAST(RANK() OVER (PARTITION BY r.period_type, r.period_start, r.team_id ORDER BY r.attainment DESC) AS BIGINT) AS team_rank,
           PERCENT_RANK() OVER (PARTITION BY r.period_type, r.period_start ORDER BY r.attainment ASC) AS percentile
    FROM r
)
SELECT k.period_type, k.period_start, k.rep_id, k.attainment, k.team_id, k.region,
       k.company_rank, k.team_rank, k.percentile,
       CASE WHEN s.sd > 0 THEN (k.attainment - s.mean) / s.sd END AS z_score,
       CASE WHEN k.percentile >= 0.8 THEN 'high' WHEN k.percentile <= 0.2 THEN 'low' ELSE 'core' END AS performer_band
FROM ranked k
JOIN stats s ON s.period_type = k.period_type AND s.period_start = k.period_start
ORDER BY k.period_type, k.period_start, k.company_rank, k.rep_id
