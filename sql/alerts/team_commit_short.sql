-- team_commit_short: a team's current-quarter commit forecast below ${min_ratio} of quota with
-- fewer than ${max_days_left} days left.
SELECT f.entity_id AS key,
       f.commit_vs_quota AS value,
       'commit forecast ' || CAST(f.commit_forecast AS VARCHAR) || ' of quota ' || CAST(f.quota AS VARCHAR)
         || ' with ' || CAST(c.remaining_days AS VARCHAR) || ' days left' AS message
FROM forecast f
JOIN calendar c ON c.period_type = f.period_type AND c.period_start = f.period_start
WHERE f.level = 'team' AND f.period_type = 'quarter' AND c.is_current
  AND c.remaining_days < ${max_days_left} AND f.commit_vs_quota < ${min_ratio}
