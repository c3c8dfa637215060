-- Signed up in [as_of - 30d, as_of); a purchase in [signed_up_at, min(signed_up_at + 7d, as_of)).
SELECT u.user_id
FROM users u
WHERE u.signed_up_at >= as_of() - INTERVAL 30 DAY
  AND EXISTS (
    SELECT 1 FROM events e
    WHERE e.user_id = u.user_id
      AND e.event = 'purchase'
      AND e.ts >= u.signed_up_at
      AND e.ts < least(u.signed_up_at + INTERVAL 7 DAY, as_of())
  )
