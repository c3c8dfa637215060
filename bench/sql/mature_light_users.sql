-- Age over 50, signed up before as_of - 30d, at most 2 app opens in [as_of - 30d, as_of) (none counts).
SELECT user_id
FROM users
WHERE age > 50
  AND signed_up_at < as_of() - INTERVAL 30 DAY
  AND user_id NOT IN (
    SELECT user_id FROM events
    WHERE event = 'app_open' AND ts >= as_of() - INTERVAL 30 DAY
    GROUP BY user_id HAVING count(*) > 2
)
