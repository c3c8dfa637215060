-- At least 3 purchases in [as_of - 30d, as_of).
SELECT user_id
FROM users
WHERE user_id IN (
    SELECT user_id FROM events
    WHERE event = 'purchase' AND ts >= as_of() - INTERVAL 30 DAY
    GROUP BY user_id HAVING count(*) >= 3
)
