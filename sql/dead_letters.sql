-- dead_letters: the most recent refused messages (pipeline setting source.dead_letter_rows),
-- with where they came from, why, and the raw payload (text, or base64 when not UTF-8).
SELECT topic, "partition", "offset", reason, detail, payload, payload_encoding
FROM dead_letter_log
ORDER BY topic, "partition", "offset"
