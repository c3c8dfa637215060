-- Exactly one purchase in [as_of - 90d, as_of).
SELECT user_id
FROM users
WHERE user_id IN (
    SELECT user_id FROM events
    WHERE event = 'purchase' AND ts >= as_of() - INTERVAL 90 DAY
    GROUP BY user_id HAVING count(*) = 1
)
