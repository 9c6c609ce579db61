-- survey_nps — grain (survey, level, entity_id): all responses of a survey ever received,
-- attributed to the rep they are about and rolled up by the hierarchy of each response's day.
-- nps = 100 × (promoters − detractors) / responses; passives count in the denominator.
WITH counted AS (
    SELECT r.survey, l.level, l.entity_id,
           COUNT(*) AS responses,
           SUM(CASE WHEN r.category = 'promoter' THEN 1 ELSE 0 END) AS promoters,
           SUM(CASE WHEN r.category = 'passive' THEN 1 ELSE 0 END) AS passives,
           SUM(CASE WHEN r.category = 'detractor' THEN 1 ELSE 0 END) AS detractors
    FROM survey_responses r
    JOIN rep_levels l ON l.rep_id = r.rep_id
                     AND day_of(r.occurred_at) BETWEEN l.valid_from AND l.valid_to
    GROUP BY r.survey, l.level, l.entity_id
)
SELECT survey, level, entity_id, responses, promoters, passives, detractors,
       -- 100 × the integer difference first: the same DOUBLE as 100.0 × (p − d) / responses
       -- (both products are exact), where 100.0 × ratio(p − d, responses) would round twice
       ratio(100 * (promoters - detractors), responses) AS nps
FROM counted
ORDER BY survey, level, entity_id
