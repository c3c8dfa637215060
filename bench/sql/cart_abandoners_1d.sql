-- Added to cart in [as_of - 1d, as_of), no purchase in it.
SELECT user_id
FROM users
WHERE user_id IN (SELECT user_id FROM events WHERE event = 'add_to_cart' AND ts >= as_of() - INTERVAL 1 DAY)
  AND user_id NOT IN (SELECT user_id FROM events WHERE event = 'purchase' AND ts >= as_of() - INTERVAL 1 DAY)
