-- loyalty_points_expiring_soon: on night D, one row per lot whose expires_on is exactly
-- D + 30, D + 60 or D + 90 days and that still holds points at the end of the night.
-- event_id is stable per lot and horizon ('expiring-<lot>-<days_out>'), so a rerun of the
-- night enqueues nothing new. event_time is the last second of the night.
-- Returns: event_id, event_name, customer_id, event_time, then points, days_out, expiry_date.
-- Parameters: %(program_id)s, %(window_end)s, %(night)s, %(member_lo)s, %(member_hi)s.
WITH lots AS (
    SELECT lot.entry_id, lot.member_id, lot.expires_on,
           lot.points + COALESCE((
               SELECT sum(d.points) FROM loyalty.points_ledger d
               WHERE d.lot_entry_id = lot.entry_id AND d.recorded_at < %(window_end)s
           ), 0) AS remaining
    FROM loyalty.points_ledger lot
    WHERE lot.program_id = %(program_id)s
      AND lot.entry_type = 'earn'
      AND lot.recorded_at < %(window_end)s
      AND lot.expires_on IN (%(night)s::date + 30, %(night)s::date + 60, %(night)s::date + 90)
      AND lot.member_id >= %(member_lo)s AND lot.member_id < %(member_hi)s
)
SELECT 'expiring-' || lots.entry_id || '-' || (lots.expires_on - %(night)s::date) AS event_id,
       'loyalty_points_expiring_soon'   AS event_name,
       m.relation_reference             AS customer_id,
       %(window_end)s::timestamptz - interval '1 second' AS event_time,
       lots.remaining                   AS points,
       lots.expires_on - %(night)s::date AS days_out,
       lots.expires_on                  AS expiry_date
FROM lots
JOIN loyalty.members m ON m.member_id = lots.member_id
WHERE lots.remaining > 0
  AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
