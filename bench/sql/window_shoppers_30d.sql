-- At least 20 item views and no add to cart in [as_of - 30d, as_of).
SELECT user_id
FROM users
WHERE user_id IN (
    SELECT user_id FROM events
    WHERE event = 'view_item' AND ts >= as_of() - INTERVAL 30 DAY
    GROUP BY user_id HAVING count(*) >= 20
)
  AND user_id NOT IN (SELECT user_id FROM events WHERE event = 'add_to_cart' AND ts >= as_of() - INTERVAL 30 DAY)
