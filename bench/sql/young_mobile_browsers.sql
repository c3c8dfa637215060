-- Age under 30 (a missing age fails), android or ios, at least 5 item views in [as_of - 7d, as_of).
SELECT user_id
FROM users
WHERE age < 30
  AND platform IN ('android', 'ios')
  AND user_id IN (
    SELECT user_id FROM events
    WHERE event = 'view_item' AND ts >= as_of() - INTERVAL 7 DAY
    GROUP BY user_id HAVING count(*) >= 5
)
