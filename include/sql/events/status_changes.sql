-- loyalty_member_activated / loyalty_member_suspended: one row per status change to
-- 'active' or 'suspended' recorded in the night (other changes send no event; the status
-- attribute carries them).
-- Returns: event_id, event_name, customer_id, event_time, then previous_status.
-- Parameters: %(program_id)s, %(window_start)s, %(window_end)s, %(member_lo)s, %(member_hi)s.
SELECT 'status-' || c.change_id         AS event_id,
       CASE c.to_status WHEN 'active' THEN 'loyalty_member_activated'
                        ELSE 'loyalty_member_suspended' END AS event_name,
       m.relation_reference             AS customer_id,
       c.changed_at                     AS event_time,
       c.from_status                    AS previous_status
FROM loyalty.member_status_changes c
JOIN loyalty.members m ON m.member_id = c.member_id
WHERE m.program_id = %(program_id)s
  AND c.to_status IN ('active', 'suspended')
  AND c.recorded_at >= %(window_start)s AND c.recorded_at < %(window_end)s
  AND c.member_id >= %(member_lo)s AND c.member_id < %(member_hi)s
  AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
