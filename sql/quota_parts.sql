-- quota_parts (helper view): every quota record (latest version per rep and period_start)
-- prorated by days onto every fiscal period it overlaps:
--   amount_corporate × overlap_days / record_days, exact to 12 decimals (rounded once later).
SELECT q.rep_id,
       c.period_type,
       c.period_start,
       prorate(to_corporate(q.amount, q.currency, q.period_start),
               days_between(GREATEST(q.period_start, c.period_start), LEAST(q.period_end, c.period_end)) + 1,
               days_between(q.period_start, q.period_end) + 1) AS quota_part
FROM quotas q
JOIN calendar c ON c.period_start <= q.period_end AND c.period_end >= q.period_start
