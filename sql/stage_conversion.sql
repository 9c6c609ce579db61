-- stage_conversion — grain (level, entity_id, cohort_quarter, stage).
-- Cohort: the fiscal quarter of the deal's created_at. A deal reached a stage when any version
-- received had that stage or a later one (`deals.reached_rank`: closed_lost counts as the
-- highest stage held before it). Four rows per (entity, cohort), prospecting .. negotiation.
WITH per_rep AS (
    -- deals per rep, cohort and furthest stage first, then the roll-up to levels
    SELECT d.rep_id, fiscal_period_start('quarter', day_of(d.created_at)) AS cohort_quarter,
           d.reached_rank, COUNT(*) AS deals
    FROM deals d
    GROUP BY d.rep_id, fiscal_period_start('quarter', day_of(d.created_at)), d.reached_rank
),
funnel AS (
    SELECT stage, funnel_rank FROM stages WHERE funnel_rank BETWEEN 1 AND 4
),
counted AS (
    SELECT l.level, l.entity_id, c.cohort_quarter, f.stage, f.funnel_rank,
           SUM(CASE WHEN c.reached_rank >= f.funnel_rank THEN c.deals ELSE 0 END) AS reached,
           SUM(CASE WHEN c.reached_rank >= f.funnel_rank + 1 THEN c.deals ELSE 0 END) AS advanced
    FROM per_rep c
    JOIN rep_levels l ON l.rep_id = c.rep_id
    CROSS JOIN funnel f
    GROUP BY l.level, l.entity_id, c.cohort_quarter, f.stage, f.funnel_rank
)
SELECT level, entity_id, cohort_quarter, stage, reached, advanced,
       ratio(advanced, reached) AS conversion
FROM counted
ORDER BY level, entity_id, cohort_quarter, funnel_rank
