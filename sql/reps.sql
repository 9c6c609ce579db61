-- reps (helper view): every rep any state table names, with the team and region in force on
-- as_of_date (the rep's current place; to roll a figure up, use rep_levels, which follows the
-- hierarchy day by day). Reps missing from the roster are in team and region `unassigned`.
WITH ids AS (
    -- the state keeps them: roster, quota records, deals, activities and survey responses
    SELECT rep_id FROM rep_ids
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
