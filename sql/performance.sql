-- performance — grain (period_type, period_start, rep_id): reps with a non-NULL attainment,
-- ranked within the company and their team: the team they sat in on the period's last day, or
-- on as_of_date for a period still running.
WITH r AS (
    SELECT a.period_type, a.period_start, a.entity_id AS rep_id, a.attainment, h.team_id, h.region
    FROM attainment a
    CROSS JOIN clock c
    JOIN rep_hierarchy h ON h.rep_id = a.entity_id
                        AND LEAST(a.period_end, c.as_of_date) BETWEEN h.valid_from AND h.valid_to
    WHERE a.level = 'rep' AND a.attainment IS NOT NULL
),
ranked AS (
    SELECT r.*,
           CAST(RANK() OVER (PARTITION BY r.period_type, r.period_start ORDER BY r.attainment DESC) AS BIGINT) AS company_rank,
           CAST(RANK() OVER (PARTITION BY r.period_type, r.period_start, r.team_id ORDER BY r.attainment DESC) AS BIGINT) AS team_rank,
           PERCENT_RANK() OVER (PARTITION BY r.period_type, r.period_start ORDER BY r.attainment ASC) AS percentile,
           -- The mean and the deviation as window aggregates over a fixed row order: a GROUP BY
           -- would add the DOUBLEs in whatever order the partitions deliver them, and the last
           -- bit of z_score would differ between two runs over the same state.
           AVG(r.attainment) OVER (PARTITION BY r.period_type, r.period_start ORDER BY r.attainment, r.rep_id
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS mean,
           STDDEV_POP(r.attainment) OVER (PARTITION BY r.period_type, r.period_start ORDER BY r.attainment, r.rep_id
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS sd
    FROM r
)
SELECT k.period_type, k.period_start, k.rep_id, k.attainment, k.team_id, k.region,
       k.company_rank, k.team_rank, k.percentile,
       CASE WHEN k.sd > 0 THEN (k.attainment - k.mean) / k.sd END AS z_score,
       CASE WHEN k.percentile >= 0.8 THEN 'high' WHEN k.percentile <= 0.2 THEN 'low' ELSE 'core' END AS performer_band
FROM ranked k
ORDER BY k.period_type, k.period_start, k.company_rank, k.rep_id
