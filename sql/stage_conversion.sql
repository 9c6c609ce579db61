-- stage_conversion — grain (level, entity_id, cohort_quarter, stage).
-- Cohort: the fiscal quarter of the deal's created_at. A deal reached a stage when any version
-- received had that stage or a later one (`deals.reached_rank`: closed_lost counts as the
-- highest stage held before it). Four rows per (entity, cohort), prospecting .. negotiation.
-- A deal rolls up by its owner's place in the hierarchy on the day of its created_at.
WITH per_rep AS (
    -- deals per rep, hierarchy range, cohort and furthest stage first, then the roll-up to
    -- levels (on the range's first day)
    SELECT d.rep_id, h.valid_from AS on_day,
           fiscal_period_start('quarter', day_of(d.created_at)) AS cohort_quarter,
           d.reached_rank, COUNT(*) AS deals
    FROM deals d
    JOIN rep_hierarchy h ON h.rep_id = d.rep_id
                        AND day_of(d.created_at) BETWEEN h.valid_from AND h.valid_to
    GROUP BY d.rep_id, h.valid_from, fiscal_period_start('quarter', day_of(d.created_at)), d.reached_rank
),
funnel AS (
    SELECT stage, funnel_rank FROM stages WHERE funnel_rank BETWEEN 1 AND 4
),
counted AS (
    SELECT l.level, l.entity_id, c.cohort_quarter, f.stage, f.funnel_rank,
           SUM(CASE WHEN c.reached_rank >= f.funnel_rank THEN c.deals ELSE 0 END) AS reached,
           SUM(CASE WHEN c.reached_rank >= f.funnel_rank + 1 THEN c.deals ELSE 0 END) AS advanced
    FROM per_rep c
    JOIN rep_levels l ON l.rep_id = c.rep_id AND c.on_day BETWEEN l.valid_from AND l.valid_to
    CROSS JOIN funnel f
    GROUP BY l.level, l.entity_id, c.cohort_quarter, f.stage, f.funnel_rank
)
SELECT level, entity_id, cohort_quarter, stage, reached, advanced,
       ratio(advanced, reached) AS conversion
FROM counted
ORDER BY level, entity_id, cohort_quarter, funnel_rank
