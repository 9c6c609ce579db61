-- quota_totals (helper view): the quota of every entity and fiscal period, the rounded exact
-- sum of its reps' prorated quota records (of the days they belonged to it). NULL when no
-- overlapping record converts.
SELECT level, entity_id, period_type, period_start, money(SUM(quota_part)) AS quota
FROM quota_parts
GROUP BY level, entity_id, period_type, period_start
