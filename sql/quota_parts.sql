-- quota_parts (helper view): every quota record (latest version per rep and period_start)
-- prorated by days onto every fiscal period it overlaps and every level the rep rolls up into
-- on those days (rep_levels), so a rep who moves team mid-period leaves the days before the
-- move with the old team:
--   amount_corporate × overlap_days / record_days, exact to 12 decimals (rounded once later),
-- with overlap_days the days the record, the period and the level's range share.
SELECT q.rep_id,
       l.level,
       l.entity_id,
       c.period_type,
       c.period_start,
       prorate(to_corporate(q.amount, q.currency, q.period_start),
               days_between(GREATEST(q.period_start, c.period_start, l.valid_from),
                            LEAST(q.period_end, c.period_end, l.valid_to)) + 1,
               days_between(q.period_start, q.period_end) + 1) AS quota_part
FROM quotas q
JOIN calendar c ON c.period_start <= q.period_end AND c.period_end >= q.period_start
JOIN rep_levels l ON l.rep_id = q.rep_id
                 AND l.valid_from <= LEAST(q.period_end, c.period_end)
                 AND l.valid_to >= GREATEST(q.period_start, c.period_start)
