-- stalled_deal: an open deal in the same stage for ${stage_days}+ days with no activity in
-- ${quiet_days} days.
SELECT d.deal_id AS key,
       CAST(d.days_in_stage AS DOUBLE) AS value,
       d.stage || ' for ' || CAST(d.days_in_stage AS VARCHAR) || ' days, owner ' || d.rep_id AS message
FROM deals_current d
CROSS JOIN clock c
WHERE NOT d.is_closed AND d.days_in_stage >= ${stage_days}
  AND (d.last_activity_at IS NULL OR days_between(day_of(d.last_activity_at), c.as_of_date) >= ${quiet_days})
