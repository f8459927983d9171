-- loyalty_segment_entered / loyalty_segment_exited: one row per segment entry or exit
-- recorded in the night.
-- Returns: event_id, event_name, customer_id, event_time, then segment, segment_name.
-- Parameters: %(program_id)s, %(window_start)s, %(window_end)s, %(member_lo)s, %(member_hi)s.
SELECT 'segment-in-' || s.membership_id AS event_id,
       'loyalty_segment_entered'        AS event_name,
       m.relation_reference             AS customer_id,
       s.entered_at                     AS event_time,
       s.segment_id                     AS segment,
       g.name                           AS segment_name
FROM loyalty.segment_memberships s
JOIN loyalty.members m ON m.member_id = s.member_id
JOIN loyalty.segments g ON g.program_id = s.program_id AND g.segment_id = s.segment_id
WHERE s.program_id = %(program_id)s
  AND s.entered_recorded_at >= %(window_start)s AND s.entered_recorded_at < %(window_end)s
  AND s.member_id >= %(member_lo)s AND s.member_id < %(member_hi)s
  AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
UNION ALL
SELECT 'segment-out-' || s.membership_id,
       'loyalty_segment_exited',
       m.relation_reference,
       s.exited_at,
       s.segment_id,
       g.name
FROM loyalty.segment_memberships s
JOIN loyalty.members m ON m.member_id = s.member_id
JOIN loyalty.segments g ON g.program_id = s.program_id AND g.segment_id = s.segment_id
WHERE s.program_id = %(program_id)s
  AND s.exited_recorded_at >= %(window_start)s AND s.exited_recorded_at < %(window_end)s
  AND s.member_id >= %(member_lo)s AND s.member_id < %(member_hi)s
  AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
