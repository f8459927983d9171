-- loyalty_points_expired: one row per expiry ledger entry (one lot's remaining points).
-- Returns: event_id, event_name, customer_id, event_time, then points (positive), expiry_date.
-- Parameters: %(program_id)s, %(window_start)s, %(window_end)s, %(member_lo)s, %(member_hi)s.
SELECT 'expired-' || l.entry_id         AS event_id,
       'loyalty_points_expired'         AS event_name,
       m.relation_reference             AS customer_id,
       l.occurred_at                    AS event_time,
       -l.points                        AS points,
       lot.expires_on                   AS expiry_date
FROM loyalty.points_ledger l
JOIN loyalty.points_ledger lot ON lot.entry_id = l.lot_entry_id
JOIN loyalty.members m ON m.member_id = l.member_id
WHERE l.program_id = %(program_id)s
  AND l.entry_type = 'expire'
  AND l.recorded_at >= %(window_start)s AND l.recorded_at < %(window_end)s
  AND l.member_id >= %(member_lo)s AND l.member_id < %(member_hi)s
  AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
