-- Member attributes: one row per member enrolled before the end of the night, as of the end
-- of the night (rows recorded later are ignored, so a rerun gives the same values).
-- Returns: customer_id (required) and the 14 attributes of the integration guide:
--   points_available, points_accrued_lifetime, points_redeemed_lifetime, points_expired_lifetime,
--   tier, status, enrollment_date, last_transaction_date, total_transactions,
--   days_since_last_activity, points_expiring_30d, points_expiring_60d, points_expiring_90d.
-- Every further column becomes a user attribute of that name. Dates are local dates in the
-- program's time zone; days_since_last_activity counts from the night, not from the wall clock.
-- Placeholder times never fail the template or hide a member: an enrolment time that is NULL,
-- +-infinity or from year 2200 (the sync's last sendable year is 2199) keeps the member in, and a
-- last transaction at +-infinity gives no days_since_last_activity; the sync leaves such dates
-- out of the payload and records them in the quarantine.
-- Parameters: %(program_id)s, %(window_end)s, %(night)s, %(time_zone)s,
--   %(member_lo)s, %(member_hi)s, %(customer_ids)s.
-- %(customer_ids)s is NULL in the night (every member of the chunk); the live lane's attribute
-- updates (programs file: live.attributes) pass a list of customer ids, and then only those
-- members are returned and every aggregate reads only their rows (member_id = ANY(...) on the
-- member indexes), so a live run touching 100 members reads 100 members. The NULL test folds
-- away before planning, so the night's plan is the one without it.
WITH mem AS NOT MATERIALIZED (
    SELECT m.member_id, m.relation_reference, m.tier, m.status, m.enrolled_at
    FROM loyalty.members m
    WHERE m.program_id = %(program_id)s
      AND (m.enrolled_at < %(window_end)s OR m.enrolled_at IS NULL OR NOT isfinite(m.enrolled_at)
           OR m.enrolled_at >= '2200-01-01 00:00+00')
      AND m.member_id >= %(member_lo)s AND m.member_id < %(member_hi)s
      AND (%(customer_ids)s::text[] IS NULL OR m.relation_reference = ANY(%(customer_ids)s::text[]))
),
ledger AS (
    SELECT l.member_id,
           sum(l.points)                                                    AS available,
           COALESCE(sum(l.points) FILTER (WHERE l.entry_type = 'earn'), 0)  AS accrued,
           COALESCE(-sum(l.points) FILTER (WHERE l.entry_type IN ('redeem', 'reversal')), 0) AS redeemed,
           COALESCE(-sum(l.points) FILTER (WHERE l.entry_type = 'expire'), 0) AS expired
    FROM loyalty.points_ledger l
    WHERE l.program_id = %(program_id)s
      AND l.recorded_at < %(window_end)s
      AND l.member_id >= %(member_lo)s AND l.member_id < %(member_hi)s
      AND (%(customer_ids)s::text[] IS NULL OR l.member_id = ANY(ARRAY(SELECT member_id FROM mem)))
    GROUP BY l.member_id
),
lots AS (
    -- A lot's remaining points: the lot and the debits naming it, all rows of one member, so
    -- the chunk reads only its members' index entries (ledger_member_recorded_idx).
    SELECT l.member_id, max(l.expires_on) - %(night)s::date AS days_left, sum(l.points) AS remaining
    FROM loyalty.points_ledger l
    WHERE l.program_id = %(program_id)s
      AND l.recorded_at < %(window_end)s
      AND l.member_id >= %(member_lo)s AND l.member_id < %(member_hi)s
      AND (%(customer_ids)s::text[] IS NULL OR l.member_id = ANY(ARRAY(SELECT member_id FROM mem)))
    GROUP BY l.member_id, COALESCE(l.lot_entry_id, l.entry_id)
    HAVING max(l.expires_on) > %(night)s::date AND max(l.expires_on) <= %(night)s::date + 90
),
expiring AS (
    SELECT member_id,
           sum(remaining) FILTER (WHERE days_left <= 30) AS d30,
           sum(remaining) FILTER (WHERE days_left <= 60) AS d60,
           sum(remaining)                                AS d90
    FROM lots
    GROUP BY member_id
),
txn AS (
    SELECT t.member_id, max(t.occurred_at) AS last_at, count(*) AS n
    FROM loyalty.transactions t
    WHERE t.program_id = %(program_id)s
      AND t.recorded_at < %(window_end)s
      AND t.member_id >= %(member_lo)s AND t.member_id < %(member_hi)s
      AND (%(customer_ids)s::text[] IS NULL OR t.member_id = ANY(ARRAY(SELECT member_id FROM mem)))
    GROUP BY t.member_id
),
tier_before AS (
    SELECT DISTINCT ON (c.member_id) c.member_id, c.to_tier
    FROM loyalty.member_tier_changes c
    WHERE c.recorded_at < %(window_end)s
      AND c.member_id >= %(member_lo)s AND c.member_id < %(member_hi)s
      AND (%(customer_ids)s::text[] IS NULL OR c.member_id = ANY(ARRAY(SELECT member_id FROM mem)))
    ORDER BY c.member_id, c.recorded_at DESC, c.change_id DESC
),
tier_after AS (
    SELECT DISTINCT ON (c.member_id) c.member_id, c.from_tier
    FROM loyalty.member_tier_changes c
    WHERE c.recorded_at >= %(window_end)s
      AND c.member_id >= %(member_lo)s AND c.member_id < %(member_hi)s
      AND (%(customer_ids)s::text[] IS NULL OR c.member_id = ANY(ARRAY(SELECT member_id FROM mem)))
    ORDER BY c.member_id, c.recorded_at, c.change_id
),
status_before AS (
    SELECT DISTINCT ON (c.member_id) c.member_id, c.to_status
    FROM loyalty.member_status_changes c
    WHERE c.recorded_at < %(window_end)s
      AND c.member_id >= %(member_lo)s AND c.member_id < %(member_hi)s
      AND (%(customer_ids)s::text[] IS NULL OR c.member_id = ANY(ARRAY(SELECT member_id FROM mem)))
    ORDER BY c.member_id, c.recorded_at DESC, c.change_id DESC
),
status_after AS (
    SELECT DISTINCT ON (c.member_id) c.member_id, c.from_status
    FROM loyalty.member_status_changes c
    WHERE c.recorded_at >= %(window_end)s
      AND c.member_id >= %(member_lo)s AND c.member_id < %(member_hi)s
      AND (%(customer_ids)s::text[] IS NULL OR c.member_id = ANY(ARRAY(SELECT member_id FROM mem)))
    ORDER BY c.member_id, c.recorded_at, c.change_id
)
SELECT mem.relation_reference                                  AS customer_id,
       COALESCE(ledger.available, 0)                           AS points_available,
       COALESCE(ledger.accrued, 0)                             AS points_accrued_lifetime,
       COALESCE(ledger.redeemed, 0)                            AS points_redeemed_lifetime,
       COALESCE(ledger.expired, 0)                             AS points_expired_lifetime,
       COALESCE(tier_before.to_tier, tier_after.from_tier, mem.tier)        AS tier,
       COALESCE(status_before.to_status, status_after.from_status, mem.status) AS status,
       (mem.enrolled_at AT TIME ZONE %(time_zone)s)::date      AS enrollment_date,
       (txn.last_at AT TIME ZONE %(time_zone)s)::date          AS last_transaction_date,
       COALESCE(txn.n, 0)                                      AS total_transactions,
       CASE WHEN isfinite(txn.last_at)
            THEN %(night)s::date - (txn.last_at AT TIME ZONE %(time_zone)s)::date END AS days_since_last_activity,
       COALESCE(expiring.d30, 0)                               AS points_expiring_30d,
       COALESCE(expiring.d60, 0)                               AS points_expiring_60d,
       COALESCE(expiring.d90, 0)                               AS points_expiring_90d
FROM mem
LEFT JOIN ledger        ON ledger.member_id = mem.member_id
LEFT JOIN expiring      ON expiring.member_id = mem.member_id
LEFT JOIN txn           ON txn.member_id = mem.member_id
LEFT JOIN tier_before   ON tier_before.member_id = mem.member_id
LEFT JOIN tier_after    ON tier_after.member_id = mem.member_id
LEFT JOIN status_before ON status_before.member_id = mem.member_id
LEFT JOIN status_after  ON status_after.member_id = mem.member_id
