-- loyalty_tier_upgraded / loyalty_tier_downgraded: one row per tier change recorded in the
-- night; the direction comes from the tiers' ranks.
-- Returns: event_id, event_name, customer_id, event_time, then from_tier, to_tier.
-- Parameters: %(program_id)s, %(window_start)s, %(window_end)s, %(member_lo)s, %(member_hi)s.
SELECT 'tier-' || c.change_id           AS event_id,
       CASE WHEN tt.rank > tf.rank THEN 'loyalty_tier_upgraded'
            ELSE 'loyalty_tier_downgraded' END AS event_name,
       m.relation_reference             AS customer_id,
       c.changed_at                     AS event_time,
       c.from_tier                      AS from_tier,
       c.to_tier                        AS to_tier
FROM loyalty.member_tier_changes c
JOIN loyalty.members m ON m.member_id = c.member_id
JOIN loyalty.tiers tf ON tf.program_id = m.program_id AND tf.tier = c.from_tier
JOIN loyalty.tiers tt ON tt.program_id = m.program_id AND tt.tier = c.to_tier
WHERE m.program_id = %(program_id)s
  AND c.recorded_at >= %(window_start)s AND c.recorded_at < %(window_end)s
  AND c.member_id >= %(member_lo)s AND c.member_id < %(member_hi)s
  AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
