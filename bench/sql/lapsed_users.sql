-- At least 3 app opens over all history before as_of, none in [as_of - 7d, as_of).
SELECT user_id
FROM users
WHERE user_id IN (SELECT user_id FROM events WHERE event = 'app_open' GROUP BY user_id HAVING count(*) >= 3)
  AND user_id NOT IN (SELECT user_id FROM events WHERE event = 'app_open' AND ts >= as_of() - INTERVAL 7 DAY)
