-- rep_levels (helper view): the four levels of the hierarchy, one row per rep and level.
-- Join a rep-grain fact to this view and group by (level, entity_id) to roll it up; ratios
-- are then recomputed from the rolled-up totals, never averaged.
SELECT rep_id, 'rep' AS level, rep_id AS entity_id FROM reps
UNION ALL SELECT rep_id, 'team' AS level, team_id AS entity_id FROM reps
UNION ALL SELECT rep_id, 'region' AS level, region AS entity_id FROM reps
UNION ALL SELECT rep_id, 'company' AS level, 'all' AS entity_id FROM reps
