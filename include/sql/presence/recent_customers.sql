-- Customers the presence refresher checks first (the MoEngage presence cache, docs/presence.md):
-- those active lately are the ones likely to have events next night.
-- Returns: customer_id (required; the MoEngage customer_id = Relation Reference), most recently
-- active first. Other columns are ignored.
-- Parameters: %(program_id)s, %(since)s (timestamptz: activity after it counts).
SELECT m.relation_reference AS customer_id
FROM loyalty.points_ledger l
JOIN loyalty.members m ON m.member_id = l.member_id
WHERE l.program_id = %(program_id)s
  AND l.recorded_at >= %(since)s
GROUP BY m.relation_reference
ORDER BY max(l.recorded_at) DESC
