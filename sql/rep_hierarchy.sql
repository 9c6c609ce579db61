-- rep_hierarchy (helper view): the effective-dated hierarchy of every rep any state table
-- names: the days valid_from..valid_to (inclusive) in which the rep sat in team_id and
-- region. A rep's ranges cover every day (the first starts 0001-01-01, the last ends
-- 9999-12-31), so a fact of any day finds exactly one:
--   JOIN rep_hierarchy h ON h.rep_id = f.rep_id AND f.day BETWEEN h.valid_from AND h.valid_to
-- Reps missing from the roster have one range, team and region `unassigned`.
SELECT rep_id, valid_from, valid_to, team_id, region FROM roster_ranges
UNION ALL
SELECT r.rep_id, DATE '0001-01-01' AS valid_from, DATE '9999-12-31' AS valid_to,
       'unassigned' AS team_id, 'unassigned' AS region
FROM reps r
WHERE r.rep_id NOT IN (SELECT rep_id FROM roster_ranges)
