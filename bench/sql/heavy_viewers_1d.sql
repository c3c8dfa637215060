-- At least 10 item views in [as_of - 1d, as_of).
SELECT user_id
FROM users
WHERE user_id IN (
    SELECT user_id FROM events
    WHERE event = 'view_item' AND ts >= as_of() - INTERVAL 1 DAY
    GROUP BY user_id HAVING count(*) >= 10
)
