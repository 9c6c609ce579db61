-- A test rule (tests/incremental.rs) over a published table and a helper view that no table
-- reads when only dead letters changed (`reps`): the plan must compute the helper for it.
SELECT r.rep_id AS key,
       CAST(COUNT(*) AS DOUBLE) AS value,
       'dead letters seen' AS message
FROM dead_letters d CROSS JOIN reps r
GROUP BY r.rep_id
HAVING COUNT(*) > ${at_least}
