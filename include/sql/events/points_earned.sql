-- loyalty_points_earned: one row per earn ledger entry (a points lot) recorded in the night.
-- Returns: event_id, event_name, customer_id, event_time (required), then event attributes:
--   points, earning_type (accrual | campaign_bonus | manual_bonus | tier_bonus), and for
--   accruals the transaction: transaction_id, amount, currency, store, channel (NULL otherwise,
--   and NULLs are not sent).
-- Parameters: %(program_id)s, %(window_start)s, %(window_end)s (recorded_at window, UTC),
--   %(member_lo)s, %(member_hi)s (member_id chunk, half-open), %(night)s (local date),
--   %(time_zone)s.
SELECT 'earn-' || l.entry_id            AS event_id,
       'loyalty_points_earned'          AS event_name,
       m.relation_reference             AS customer_id,
       l.occurred_at                    AS event_time,
       l.points                         AS points,
       l.earning_type                   AS earning_type,
       l.transaction_id                 AS transaction_id,
       t.amount                         AS amount,
       t.currency                       AS currency,
       t.store_id                       AS store,
       t.channel                        AS channel
FROM loyalty.points_ledger l
JOIN loyalty.members m ON m.member_id = l.member_id
LEFT JOIN loyalty.transactions t ON t.transaction_id = l.transaction_id
WHERE l.program_id = %(program_id)s
  AND l.entry_type = 'earn'
  AND l.recorded_at >= %(window_start)s AND l.recorded_at < %(window_end)s
  AND l.member_id >= %(member_lo)s AND l.member_id < %(member_hi)s
  AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
