-- At least 40 item views in [as_of - 7d, as_of).
SELECT user_id
FROM users
WHERE user_id IN (
    SELECT user_id FROM events
    WHERE event = 'view_item' AND ts >= as_of() - INTERVAL 7 DAY
    GROUP BY user_id HAVING count(*) >= 40
)
