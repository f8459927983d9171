-- loyalty_redemption_reversed: one row per reversed redemption whose reversal was recorded
-- in the night (a reversal may span several lots: their points are summed). The event_id names
-- the first ledger entry of the night's part, so a part recorded on a later night is its own
-- event instead of being mistaken for one already sent.
-- Returns: event_id, event_name, customer_id, event_time, then points_returned, redemption_id.
-- Parameters: %(program_id)s, %(window_start)s, %(window_end)s, %(member_lo)s, %(member_hi)s.
SELECT 'reversal-' || l.redemption_id || '-' || min(l.entry_id) AS event_id,
       'loyalty_redemption_reversed'    AS event_name,
       min(m.relation_reference)        AS customer_id,
       min(l.occurred_at)               AS event_time,
       sum(l.points)                    AS points_returned,
       l.redemption_id                  AS redemption_id
FROM loyalty.points_ledger l
JOIN loyalty.members m ON m.member_id = l.member_id
WHERE l.program_id = %(program_id)s
  AND l.entry_type = 'reversal'
  AND l.recorded_at >= %(window_start)s AND l.recorded_at < %(window_end)s
  AND l.member_id >= %(member_lo)s AND l.member_id < %(member_hi)s
  AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
GROUP BY l.redemption_id
