-- rep_levels (helper view): the four levels of the hierarchy a rep's figure of a day rolls up
-- into: one row per rep, level and validity range. `rep` and `company` rows cover every day;
-- `team` and `region` rows are the ranges of rep_hierarchy. Join a rep-grain fact on the rep
-- and the fact's own day, then group by (level, entity_id); ratios are recomputed from the
-- rolled-up totals, never averaged:
--   JOIN rep_levels l ON l.rep_id = f.rep_id AND f.day BETWEEN l.valid_from AND l.valid_to
-- A fact already summed per rep and hierarchy range joins on any day of that range (the files
-- here use the range's valid_from, or its first day inside the period).
SELECT rep_id, 'rep' AS level, rep_id AS entity_id,
       DATE '0001-01-01' AS valid_from, DATE '9999-12-31' AS valid_to FROM reps
UNION ALL SELECT rep_id, 'team' AS level, team_id AS entity_id, valid_from, valid_to FROM rep_hierarchy
UNION ALL SELECT rep_id, 'region' AS level, region AS entity_id, valid_from, valid_to FROM rep_hierarchy
UNION ALL SELECT rep_id, 'company' AS level, 'all' AS entity_id,
       DATE '0001-01-01' AS valid_from, DATE '9999-12-31' AS valid_to FROM reps
