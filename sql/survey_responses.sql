-- survey_responses — grain (response_id): every response received, with its NPS category.
SELECT response_id, rep_id, survey, score, occurred_at,
       CASE WHEN score >= 9 THEN 'promoter' WHEN score >= 7 THEN 'passive' ELSE 'detractor' END AS category
FROM surveys
ORDER BY response_id
