-- data_quality — grain (topic, reason): messages per outcome (ok, duplicate, late, every
-- bad-input reason) plus `unconverted`: latest deal versions and quota records whose amount
-- has no fx rate in force now (`unconverted`: counted over the whole state, as
-- to_corporate converts). Rows with count 0 are not written.
SELECT topic, reason, "count" FROM quality_counts WHERE "count" > 0
UNION ALL
SELECT t.topic, 'unconverted' AS reason, u."count"
FROM unconverted u JOIN topics t ON t.event_type = u.event_type
WHERE u."count" > 0
ORDER BY topic, reason
