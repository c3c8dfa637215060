-- Country US or CA, plan plus or pro, a purchase in [as_of - 30d, as_of).
SELECT user_id
FROM users
WHERE country IN ('US', 'CA')
  AND plan IN ('plus', 'pro')
  AND user_id IN (SELECT user_id FROM events WHERE event = 'purchase' AND ts >= as_of() - INTERVAL 30 DAY)
