-- deals_current — grain (deal_id): the latest version of each deal, converted to the
-- corporate currency at the rate in force on its close_date.
SELECT d.deal_id,
       d.rep_id,
       d.account_id,
       d.stage,
       money(d.amount) AS amount,
       d.currency,
       to_corporate(d.amount, d.currency, d.close_date) AS amount_corporate,
       d.close_date,
       COALESCE(d.forecast_category, s.forecast_category) AS forecast_category,
       COALESCE(d.probability, s.probability) AS probability,
       d.created_at,
       d.version,
       d.updated_at,
       s.is_closed,
       d.stage = 'closed_won' AS is_won,
       d.stage_entered_at,
       d.last_activity_at,
       CASE WHEN s.is_closed THEN days_between(day_of(d.created_at), d.close_date)
            ELSE days_between(day_of(d.created_at), c.as_of_date) END AS age_days,
       -- NULL once closed, so that a closed deal's row stops changing.
       CASE WHEN NOT s.is_closed
            THEN days_between(day_of(d.stage_entered_at), c.as_of_date) END AS days_in_stage,
       -- the partition column: the fiscal month of close_date
       fiscal_period_start('month', d.close_date) AS close_month
FROM deals d
JOIN stages s ON s.stage = d.stage
CROSS JOIN clock c
ORDER BY d.deal_id
