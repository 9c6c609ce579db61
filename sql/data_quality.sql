-- data_quality — grain (topic, reason): messages per outcome (ok, duplicate, late, every
-- bad-input reason) plus `unconverted`: latest deal versions and quota records whose amount
-- has no fx rate in force now. Rows with count 0 are not written.
SELECT topic, reason, "count" FROM quality_counts WHERE "count" > 0
UNION ALL
SELECT t.topic, 'unconverted' AS reason, COUNT(*) AS "count"
FROM deals_current d CROSS JOIN topics t
WHERE t.event_type = 'deal' AND d.amount_corporate IS NULL
GROUP BY t.topic
UNION ALL
SELECT t.topic, 'unconverted' AS reason, COUNT(*) AS "count"
FROM quotas q CROSS JOIN topics t
WHERE t.event_type = 'quota' AND to_corporate(q.amount, q.currency, q.period_start) IS NULL
GROUP BY t.topic
ORDER BY topic, reason
