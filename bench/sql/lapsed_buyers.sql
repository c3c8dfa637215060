-- A purchase in [as_of - 30d, as_of), none in [as_of - 7d, as_of).
SELECT user_id
FROM users
WHERE user_id IN (SELECT user_id FROM events WHERE event = 'purchase' AND ts >= as_of() - INTERVAL 30 DAY)
  AND user_id NOT IN (SELECT user_id FROM events WHERE event = 'purchase' AND ts >= as_of() - INTERVAL 7 DAY)
