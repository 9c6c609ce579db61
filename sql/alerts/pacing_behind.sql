-- pacing_behind: a rep's current-quarter pacing below ${min_pacing} once ${min_elapsed} of the
-- quarter has elapsed.
SELECT entity_id AS key,
       pacing AS value,
       'quarter pacing ' || CAST(ROUND(pacing, 2) AS VARCHAR) || ' after '
         || CAST(elapsed_days AS VARCHAR) || ' of ' || CAST(elapsed_days + remaining_days AS VARCHAR) || ' days' AS message
FROM attainment
WHERE level = 'rep' AND period_type = 'quarter' AND is_current
  AND time_elapsed >= ${min_elapsed} AND pacing < ${min_pacing}
