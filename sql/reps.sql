-- reps (helper view): every rep any state table names, with the team and region in force on
-- as_of_date (the rep's current place; to roll a figure up, use rep_levels, which follows the
-- hierarchy day by day). Reps missing from the roster are in team and region `unassigned`.
WITH ids AS (
    SELECT rep_id FROM roster
    UNION SELECT rep_id FROM quotas
    UNION SELECT rep_id FROM deals
    -- every rep with an activity has a row per fiscal year (a few per rep, not one a day)
    UNION SELECT rep_id FROM activity_periods WHERE period_type = 'year'
    UNION SELECT rep_id FROM surveys
),
placed AS (
    SELECT h.rep_id, h.team_id, h.region
    FROM roster_ranges h
    CROSS JOIN clock c
    WHERE c.as_of_date BETWEEN h.valid_from AND h.valid_to
)
SELECT ids.rep_id,
       COALESCE(n.team_id, 'unassigned') AS team_id,
       COALESCE(n.region, 'unassigned') AS region
FROM ids
LEFT JOIN placed n ON n.rep_id = ids.rep_id
