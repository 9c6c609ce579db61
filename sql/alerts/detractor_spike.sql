-- detractor_spike: a team's NPS below ${max_nps} in the current survey (the survey of the most
-- recent response).
WITH current_survey AS (
    SELECT survey FROM survey_responses ORDER BY occurred_at DESC, response_id LIMIT 1
)
SELECT n.entity_id AS key,
       n.nps AS value,
       'NPS ' || CAST(ROUND(n.nps, 1) AS VARCHAR) || ' in ' || n.survey || ' (' || CAST(n.responses AS VARCHAR) || ' responses)' AS message
FROM survey_nps n
JOIN current_survey s ON s.survey = n.survey
WHERE n.level = 'team' AND n.nps < ${max_nps}
