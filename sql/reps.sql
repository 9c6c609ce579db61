-- reps (helper view): every rep any state table names, with team and region from the latest
-- roster version. Reps missing from the roster roll up to team and region `unassigned`.
WITH ids AS (
    SELECT rep_id FROM roster
    UNION SELECT rep_id FROM quotas
    UNION SELECT rep_id FROM deals
    -- every rep with an activity has a row per fiscal year (a few per rep, not one a day)
    UNION SELECT rep_id FROM activity_periods WHERE period_type = 'year'
    UNION SELECT rep_id FROM surveys
)
SELECT ids.rep_id,
       COALESCE(r.team_id, 'unassigned') AS team_id,
       COALESCE(r.region, 'unassigned') AS region
FROM ids
LEFT JOIN roster r ON r.rep_id = ids.rep_id
