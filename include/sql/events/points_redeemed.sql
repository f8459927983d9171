-- loyalty_points_redeemed: one row per redemption recorded in the night.
-- Returns: event_id, event_name, customer_id, event_time, then points, redemption_id, item,
--   item_sku.
-- Parameters: %(program_id)s, %(window_start)s, %(window_end)s, %(member_lo)s, %(member_hi)s.
SELECT 'redeem-' || r.redemption_id     AS event_id,
       'loyalty_points_redeemed'        AS event_name,
       m.relation_reference             AS customer_id,
       r.redeemed_at                    AS event_time,
       r.points                         AS points,
       r.redemption_id                  AS redemption_id,
       r.item_name                      AS item,
       r.item_sku                       AS item_sku
FROM loyalty.redemptions r
JOIN loyalty.members m ON m.member_id = r.member_id
WHERE r.program_id = %(program_id)s
  AND r.recorded_at >= %(window_start)s AND r.recorded_at < %(window_end)s
  AND r.member_id >= %(member_lo)s AND r.member_id < %(member_hi)s
  AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
