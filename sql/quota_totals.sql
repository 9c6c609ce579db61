-- quota_totals (helper view): the quota of every entity and fiscal period, the rounded exact
-- sum of its reps' prorated quota records. NULL when no overlapping record converts.
SELECT l.level, l.entity_id, p.period_type, p.period_start, money(SUM(p.quota_part)) AS quota
FROM quota_parts p
JOIN rep_levels l ON l.rep_id = p.rep_id
GROUP BY l.level, l.entity_id, p.period_type, p.period_start
