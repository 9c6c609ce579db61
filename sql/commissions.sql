-- commissions — grain (rep_id, period_type = quarter, period_start): the pipeline's commission
-- plan ([commissions] in the pipeline file) on every rep-quarter of attainment. Tier bounds use
-- the rounded quarter quota; `commission()` computes the marginal tiers in exact decimals.
SELECT a.entity_id AS rep_id, a.period_type, a.period_start,
       a.quota, a.closed_won, a.attainment,
       commission(a.quota, a.closed_won) AS payout,
       p.plan
FROM attainment a
CROSS JOIN commission_plan p
WHERE a.level = 'rep' AND a.period_type = 'quarter'
ORDER BY rep_id, period_start
